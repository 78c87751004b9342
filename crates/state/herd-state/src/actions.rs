//! The user's actions on instances and on a rolling upgrade, as enums parsed once at the edge.
//!
//! Why: the API used to find the action's name in a list of strings and then dispatch on the
//! string, ending in `unreachable!`. Parsing into an enum where the request arrives makes every
//! later `match` exhaustive: a new action that is not handled does not compile. The wire names
//! (`powerOff`, `updateInstances`...) and the refusal text are unchanged.

use std::fmt;
use std::str::FromStr;

/// An action that no enum variant names. Its text lists the actions there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {what}'{given}'; actions: {}", allowed.join(", "))]
pub struct UnknownAction {
    /// `action ` or `rolling-upgrade action `.
    what: &'static str,
    pub given: String,
    pub allowed: &'static [&'static str],
}

macro_rules! action_enum {
    ($(#[$doc:meta])* $t:ident, $what:expr, { $($(#[$vdoc:meta])* $v:ident = $s:expr),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $t { $($(#[$vdoc])* $v),+ }

        impl $t {
            /// Every action, in the order the API documents them.
            pub const ALL: &'static [$t] = &[$($t::$v),+];
            /// Their wire names, in the same order.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The wire name (`powerOff`).
            pub const fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),+ }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Case-insensitive, as the API has always matched action names.
        impl FromStr for $t {
            type Err = UnknownAction;
            fn from_str(s: &str) -> Result<Self, UnknownAction> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|a| a.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| UnknownAction { what: $what, given: s.to_string(), allowed: Self::NAMES })
            }
        }
    };
}

action_enum!(
    /// `POST .../virtualMachineScaleSets/{name}/{action}`: what to do to the chosen instances.
    InstanceAction, "action ", {
        Start = "start",
        Stop = "stop",
        /// The same as `stop` (Azure's name for it).
        PowerOff = "powerOff",
        Deallocate = "deallocate",
        Restart = "restart",
        Reimage = "reimage",
        UpdateInstances = "updateInstances",
        DeleteInstances = "deleteInstances",
        /// Spot (or Low) sets only: a Preempt event as if the platform evicted the instance.
        SimulateEviction = "simulateEviction",
        /// Move to another host of its zone with its disks (a Spot instance is evicted instead).
        Redeploy = "redeploy",
    }
);

impl InstanceAction {
    /// The activity log's operation name: the wire name with a capital (`PowerOff`).
    pub fn operation(self) -> String {
        let mut op = self.as_str().to_string();
        op[..1].make_ascii_uppercase();
        op
    }
}

action_enum!(
    /// `POST .../rollingUpgrades/{action}`.
    RollingAction, "rolling-upgrade action ", {
        Start = "start",
        Cancel = "cancel",
        Pause = "pause",
        Resume = "resume",
        Rollback = "rollback",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_pinned() {
        assert_eq!(
            InstanceAction::NAMES,
            &[
                "start",
                "stop",
                "powerOff",
                "deallocate",
                "restart",
                "reimage",
                "updateInstances",
                "deleteInstances",
                "simulateEviction",
                "redeploy"
            ]
        );
        assert_eq!(RollingAction::NAMES, &["start", "cancel", "pause", "resume", "rollback"]);
        for (a, n) in InstanceAction::ALL.iter().zip(InstanceAction::NAMES) {
            assert_eq!(a.as_str(), *n);
            assert_eq!(n.parse::<InstanceAction>().unwrap(), *a);
        }
        for (a, n) in RollingAction::ALL.iter().zip(RollingAction::NAMES) {
            assert_eq!(n.parse::<RollingAction>().unwrap(), *a);
        }
        assert_eq!(InstanceAction::ALL.len(), InstanceAction::NAMES.len());
    }

    #[test]
    fn parse_ignores_case_and_names_the_choices_when_unknown() {
        assert_eq!("POWEROFF".parse::<InstanceAction>().unwrap(), InstanceAction::PowerOff);
        assert_eq!("Rollback".parse::<RollingAction>().unwrap(), RollingAction::Rollback);
        let e = "explode".parse::<InstanceAction>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "no action 'explode'; actions: start, stop, powerOff, deallocate, restart, reimage, updateInstances, \
             deleteInstances, simulateEviction, redeploy"
        );
        let e = "go".parse::<RollingAction>().unwrap_err();
        assert_eq!(e.to_string(), "no rolling-upgrade action 'go'; actions: start, cancel, pause, resume, rollback");
    }

    #[test]
    fn operation_names() {
        assert_eq!(InstanceAction::PowerOff.operation(), "PowerOff");
        assert_eq!(InstanceAction::SimulateEviction.operation(), "SimulateEviction");
    }
}
