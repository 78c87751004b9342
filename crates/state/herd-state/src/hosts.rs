//! Joined hosts in the store: the join itself (a token redeemed and a host created in one
//! transaction), cordon, capacity reports, and delete.
//!
//! Why one transaction for the join: a single-use token must not be spent on a join that then
//! fails because the name is taken, and two agents racing for one name or one token must
//! leave exactly one host. Both are compare-and-swaps of one write, which etcd meets the same
//! way (`Expect::Absent` on the name, the token's revision).

use crate::activity::user_event;
use crate::join_tokens;
use crate::records::{StateError, Store};
use chrono::{DateTime, Utc};
use herd_model::host::{HostCapacity, HostRecord, JoinRequest, Scheduling};
use herd_model::instance::InstanceRecord;
use herd_model::join_token::JoinRefusal;
use herd_model::tls::{SignedAgent, TlsRefusal};
use herd_model::FieldError;
use herd_store::{Expect, Kind, StoreError, StoreExt, WriteOp};

/// Why a host was not joined, changed or deleted.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Token(#[from] JoinRefusal),
    #[error("host name '{0}' is taken: a host of that name has joined (delete it first with `herd host delete {0}`, or choose another --name)")]
    NameTaken(String),
    #[error("host '{0}' not found")]
    NotFound(String),
    #[error("host '{name}' still runs {count} instance(s) ({sample}); move or delete them first, or delete the host with --force")]
    HasInstances { name: String, count: usize, sample: String },
    #[error(transparent)]
    Tls(#[from] TlsRefusal),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<StoreError> for HostError {
    fn from(e: StoreError) -> Self {
        HostError::State(e.into())
    }
}

/// Joins the host `req` describes: checks its labels and token, has the CA sign its public key
/// (`sign`), and stores the host and the token's use together. Nothing is written when any
/// step refuses.
pub fn join(
    store: &dyn Store,
    req: &JoinRequest,
    ca_fingerprint: &str,
    sign: impl FnOnce(&str, &str) -> Result<SignedAgent, TlsRefusal>,
    now: DateTime<Utc>,
) -> Result<(HostRecord, SignedAgent), HostError> {
    herd_model::host::check_join(req)?;
    let admission = join_tokens::admit(store, &req.token, ca_fingerprint, &req.name, now)??;
    if store.get(Kind::Host, &req.name)?.is_some() {
        return Err(HostError::NameTaken(req.name.clone()));
    }
    let signed = sign(&req.name, &req.public_key_pem)?;
    let record = HostRecord {
        name: req.name.clone(),
        zone: req.zone.clone(),
        fault_domain: req.fault_domain.clone(),
        scheduling: Scheduling::Schedulable,
        capacity: req.capacity,
        agent_version: req.agent_version.clone(),
        certificate_fingerprint: signed.fingerprint.clone(),
        join_token_id: admission.record.id.clone(),
        joined_at: now,
        fabric_address: None,
        max_lease_ms: 0,
    };
    let mut ops = vec![WriteOp::put(Kind::Host, record.name.clone(), &record, Expect::Absent)?];
    let single_use = admission.mark_used.is_some();
    ops.extend(admission.mark_used);
    let fd = record.fault_domain.as_deref().map(|f| format!(", fault domain {f}")).unwrap_or_default();
    ops.push(WriteOp::Activity(user_event(
        now,
        "",
        &record.name,
        "JoinHost",
        format!("host joined in zone {}{fd} with join token {}", record.zone, record.join_token_id),
    )));
    match store.txn(ops) {
        Ok(_) => Ok((record, signed)),
        Err(StoreError::Conflict { kind, .. }) => {
            if kind == Kind::Host.as_str() || !single_use {
                Err(HostError::NameTaken(req.name.clone()))
            } else {
                Err(HostError::Token(join_tokens::used_meanwhile()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Every joined host, by name.
pub fn list(store: &dyn Store) -> Result<Vec<HostRecord>, StateError> {
    let mut out: Vec<HostRecord> = store.list_as::<HostRecord>(Kind::Host, "")?.into_iter().map(|o| o.value).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Host `name`, if it joined.
pub fn get(store: &dyn Store, name: &str) -> Result<Option<HostRecord>, StateError> {
    Ok(store.get_as::<HostRecord>(Kind::Host, name)?.map(|o| o.value))
}

/// Cordons or uncordons host `name`; returns the record as it is now.
pub fn set_scheduling(
    store: &dyn Store,
    name: &str,
    scheduling: Scheduling,
    now: DateTime<Utc>,
) -> Result<HostRecord, HostError> {
    let obj = store.get_as::<HostRecord>(Kind::Host, name)?.ok_or_else(|| HostError::NotFound(name.into()))?;
    if obj.value.scheduling == scheduling {
        return Ok(obj.value);
    }
    let record = HostRecord { scheduling, ..obj.value };
    let (op, message) = match scheduling {
        Scheduling::Cordoned => ("CordonHost", "host cordoned: no new instances are placed on it"),
        Scheduling::Schedulable => ("UncordonHost", "host uncordoned: new instances may be placed on it"),
    };
    store.txn(vec![
        WriteOp::put(Kind::Host, name.to_string(), &record, Expect::Revision(obj.revision))?,
        WriteOp::Activity(user_event(now, "", name, op, message.into())),
    ])?;
    Ok(record)
}

/// Records what host `name`'s agent reports (capacity, and its version when given), when it
/// changed. A host deleted meanwhile stays deleted.
pub fn report(
    store: &dyn Store,
    name: &str,
    capacity: HostCapacity,
    agent_version: Option<&str>,
    fabric_address: Option<std::net::IpAddr>,
) -> Result<(), StateError> {
    let Some(obj) = store.get_as::<HostRecord>(Kind::Host, name)? else { return Ok(()) };
    let agent_version = agent_version.map_or_else(|| obj.value.agent_version.clone(), str::to_string);
    let fabric_address = fabric_address.or(obj.value.fabric_address);
    if obj.value.capacity == capacity
        && obj.value.agent_version == agent_version
        && obj.value.fabric_address == fabric_address
    {
        return Ok(());
    }
    let record = HostRecord { capacity, agent_version, fabric_address, ..obj.value };
    store.txn(vec![WriteOp::put(Kind::Host, name.to_string(), &record, Expect::Revision(obj.revision))?])?;
    Ok(())
}

/// Records that host `name` was granted a lease of `lease_ms` (issue 21): the record keeps the
/// largest ever granted, written only when it grows.
pub fn grant_lease(store: &dyn Store, name: &str, lease_ms: u64) -> Result<(), StateError> {
    let Some(obj) = store.get_as::<HostRecord>(Kind::Host, name)? else { return Ok(()) };
    if obj.value.max_lease_ms >= lease_ms {
        return Ok(());
    }
    let record = HostRecord { max_lease_ms: lease_ms, ..obj.value };
    store.txn(vec![WriteOp::put(Kind::Host, name.to_string(), &record, Expect::Revision(obj.revision))?])?;
    Ok(())
}

/// Deletes host `name`: its agent certificate is refused from then on. Refused while
/// instances are placed on it, unless `force`.
pub fn delete(store: &dyn Store, name: &str, force: bool, now: DateTime<Utc>) -> Result<HostRecord, HostError> {
    let obj = store.get_as::<HostRecord>(Kind::Host, name)?.ok_or_else(|| HostError::NotFound(name.into()))?;
    if !force {
        let on: Vec<String> = store
            .list_as::<InstanceRecord>(Kind::Instance, "")?
            .into_iter()
            .filter(|o| o.value.host.as_deref() == Some(name))
            .map(|o| o.key)
            .collect();
        if !on.is_empty() {
            let sample = on.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            return Err(HostError::HasInstances { name: name.into(), count: on.len(), sample });
        }
    }
    store.txn(vec![
        WriteOp::delete(Kind::Host, name.to_string(), Expect::Revision(obj.revision)),
        WriteOp::Activity(user_event(
            now,
            "",
            name,
            "DeleteHost",
            format!(
                "host deleted{}: its agent certificate is no longer accepted",
                if force { " (forced)" } else { "" }
            ),
        )),
    ])?;
    Ok(obj.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_model::host::HostCapacity;

    const CA: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";

    fn signer(host: &str, _key: &str) -> Result<SignedAgent, TlsRefusal> {
        Ok(SignedAgent {
            certificate_pem: format!("cert of {host}"),
            fingerprint: format!("fp-{host}"),
            ca_bundle: "ca".into(),
        })
    }

    fn request(token: &str, name: &str) -> JoinRequest {
        JoinRequest {
            token: token.into(),
            name: name.into(),
            zone: "1".into(),
            fault_domain: Some("rack-a".into()),
            public_key_pem: "key".into(),
            agent_version: "0.1.0".into(),
            capacity: HostCapacity { vcpus: 8, memory_mib: 16384, disk_free_mib: 100_000 },
        }
    }

    #[test]
    fn a_join_creates_the_host_and_spends_a_single_use_token_together_or_not_at_all() {
        let state = crate::State::in_memory().unwrap();
        let store = state.store().clone();
        let now = Utc::now();
        let new = join_tokens::NewToken {
            ttl: chrono::Duration::hours(1),
            single_use: true,
            description: "",
            ca_fingerprint: CA,
        };
        let (_, once) = join_tokens::create(&*store, &new, now).unwrap();
        let (_, many) =
            join_tokens::create(&*store, &join_tokens::NewToken { single_use: false, ..new.clone() }, now).unwrap();

        let (h2, signed) = join(&*store, &request(&once, "h2"), CA, signer, now).unwrap();
        assert_eq!(h2.certificate_fingerprint, "fp-h2");
        assert_eq!(signed.certificate_pem, "cert of h2");
        assert_eq!(get(&*store, "h2").unwrap().unwrap(), h2);
        // The single-use token is spent.
        let err = join(&*store, &request(&once, "h3"), CA, signer, now).unwrap_err();
        assert!(matches!(err, HostError::Token(JoinRefusal::Used { .. })), "{err}");
        // A taken name is refused and spends nothing: a fresh single-use token still works after.
        let (_, once2) = join_tokens::create(&*store, &new, now).unwrap();
        let err = join(&*store, &request(&once2, "h2"), CA, signer, now).unwrap_err();
        assert!(matches!(err, HostError::NameTaken(_)), "{err}");
        assert!(err.to_string().contains("herd host delete h2"), "{err}");
        join(&*store, &request(&once2, "h3"), CA, signer, now).unwrap();
        // A reusable token joins several hosts; bad labels are refused by field first.
        join(&*store, &request(&many, "h4"), CA, signer, now).unwrap();
        let err = join(&*store, &request(&many, "h 5"), CA, signer, now).unwrap_err();
        assert!(matches!(&err, HostError::Invalid(f) if f.field == "name"), "{err}");
        // A failed signature writes nothing.
        let refuse = |_: &str, _: &str| Err(TlsRefusal::NotApplicable("no CA".into()));
        assert!(join(&*store, &request(&many, "h5"), CA, refuse, now).is_err());
        assert!(get(&*store, "h5").unwrap().is_none());
        assert_eq!(list(&*store).unwrap().iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["h2", "h3", "h4"]);
    }

    #[test]
    fn cordon_report_and_delete() {
        let state = crate::State::in_memory().unwrap();
        let store = state.store().clone();
        let now = Utc::now();
        let new = join_tokens::NewToken {
            ttl: chrono::Duration::hours(1),
            single_use: false,
            description: "",
            ca_fingerprint: CA,
        };
        let (_, token) = join_tokens::create(&*store, &new, now).unwrap();
        join(&*store, &request(&token, "h2"), CA, signer, now).unwrap();
        assert_eq!(set_scheduling(&*store, "h2", Scheduling::Cordoned, now).unwrap().scheduling, Scheduling::Cordoned);
        assert_eq!(get(&*store, "h2").unwrap().unwrap().scheduling, Scheduling::Cordoned);
        assert!(matches!(set_scheduling(&*store, "nope", Scheduling::Cordoned, now), Err(HostError::NotFound(_))));
        let cap = HostCapacity { vcpus: 4, memory_mib: 8192, disk_free_mib: 5 };
        report(&*store, "h2", cap, Some("0.2.0"), Some("10.250.0.11".parse().unwrap())).unwrap();
        let h = get(&*store, "h2").unwrap().unwrap();
        assert_eq!((h.capacity, h.agent_version.as_str()), (cap, "0.2.0"));
        report(&*store, "gone", cap, None, None).unwrap();
        assert!(get(&*store, "gone").unwrap().is_none(), "a report does not bring a host back");
        delete(&*store, "h2", false, now).unwrap();
        assert!(get(&*store, "h2").unwrap().is_none());
        assert!(matches!(delete(&*store, "h2", false, now), Err(HostError::NotFound(_))));
    }
}
