//! Image imports read nothing the API user could not give: uploads are checked (digest, format
//! by content) and a server-side path is read only below `[images] import_roots`.

mod common;
use common::Server;
use std::path::{Path, PathBuf};

/// Every regular file under the gallery (uploads included).
fn gallery_files(data: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = vec![];
    walk(&data.join("images"), &mut out);
    out
}

/// A raw disk: 2 MiB of zeros with a boot signature.
fn raw_disk(p: &Path) {
    let mut b = vec![0u8; 2 << 20];
    b[510] = 0x55;
    b[511] = 0xaa;
    std::fs::write(p, b).unwrap();
}

/// A qcow2 header (version 3) whose backing file is `backing`.
fn qcow2_with_backing(p: &Path, backing: &str) {
    let mut b = vec![0u8; 65536];
    b[..4].copy_from_slice(b"QFI\xfb");
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    b[8..16].copy_from_slice(&1024u64.to_be_bytes());
    b[16..20].copy_from_slice(&(backing.len() as u32).to_be_bytes());
    b[1024..1024 + backing.len()].copy_from_slice(backing.as_bytes());
    std::fs::write(p, b).unwrap();
}

/// A sim server on `data/` of a new temporary directory. With `fill`, `images-in/` is made,
/// filled by `fill` and named the server's `[images] import_roots` before the server starts.
fn sim_server(fill: Option<fn(&Path)>) -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = fill.map(|fill| {
        let root = dir.path().join("images-in");
        std::fs::create_dir(&root).unwrap();
        fill(&root);
        format!("[images]\nimport_roots = [\"{}\"]\n", root.display())
    });
    let s = Server::start("sim", &data, config.as_deref());
    (dir, data, s)
}

#[test]
fn a_server_side_path_is_refused_without_import_roots() {
    let (_dir, data, s) = sim_server(None);
    for (flag, path) in [("--disk", "/etc/shadow"), ("--kernel", "/etc/shadow"), ("--disk", "/etc/passwd")] {
        let e = s.err(&["image", "import", "--urn", "Bad:Img:1:1.0.0", "--server-path", flag, path]);
        assert!(e.contains(&flag[2..]) && e.contains("[images] import_roots"), "{e}");
    }
    // The server's own secrets are no image either, whatever the request says.
    let token = data.join("api-token");
    let e = s.err(&["image", "import", "--urn", "Bad:Img:1:1.0.0", "--server-path", "--disk", token.to_str().unwrap()]);
    assert!(e.contains("import_roots"), "{e}");
    assert!(s.json(&["image", "list"]).as_array().unwrap().is_empty());
    assert!(gallery_files(&data).is_empty(), "{:?}", gallery_files(&data));
}

#[test]
fn import_roots_allow_regular_files_below_them_only() {
    let (dir, data, s) = sim_server(Some(|_| {}));
    let root = dir.path().join("images-in");
    std::os::unix::fs::symlink("/etc/shadow", root.join("shadow.raw")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(root.join("pipe.raw")).status().unwrap().success(), "mkfifo");
    qcow2_with_backing(&root.join("backed.qcow2"), "/etc/shadow");
    raw_disk(&root.join("good.raw"));
    let import = |name: &str| {
        let p = root.join(name);
        s.herd(&[
            "image",
            "import",
            "--urn",
            &format!("T:{}:1:1.0.0", name.replace('.', "-")),
            "--server-path",
            "--disk",
            p.to_str().unwrap(),
        ])
    };
    for (name, want) in
        [("shadow.raw", "cannot be opened"), ("pipe.raw", "not a regular file"), ("backed.qcow2", "backing file")]
    {
        let started = std::time::Instant::now();
        let out = import(name);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains("disk") && e.contains(want), "{name}: {e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{name} held the import");
    }
    // Nothing of the refused imports stayed on disk (the qcow2 was copied, then refused).
    assert!(gallery_files(&data).is_empty(), "{:?}", gallery_files(&data));
    let e = s.err(&["image", "import", "--urn", "T:Out:1:1.0.0", "--server-path", "--disk", "/etc/passwd"]);
    assert!(e.contains("not below a directory allowed by [images] import_roots"), "{e}");
    let out = import("good.raw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = s.json(&["image", "show", "--urn", "T:good-raw:1:1.0.0"]);
    assert_eq!(img["source"]["format"], "raw", "{img}");
}

#[test]
fn a_root_holding_the_data_dir_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for setting in ["[images]\nimport_roots", "[extensions]\nfile_roots"] {
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, format!("{setting} = [\"{}\"]\n", dir.path().display())).unwrap();
        let out = std::process::Command::new(common::HERD)
            .args(["server", "--listen", "127.0.0.1:0", "--driver", "sim", "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains("data dir"), "{setting}: {e}");
    }
}

#[test]
fn uploads_are_checked_by_digest_and_content() {
    let (dir, data, s) = sim_server(None);
    // Not an image: text, and a file too small to be a raw disk.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "root:$6$hash:19000:0:99999:7:::\n").unwrap();
    let e = s.err(&["image", "import", "--urn", "T:Txt:1:1.0.0", "--disk", notes.to_str().unwrap()]);
    assert!(e.contains("disk") && e.contains("neither qcow2 nor a raw disk"), "{e}");
    let backed = dir.path().join("backed.qcow2");
    qcow2_with_backing(&backed, "/etc/shadow");
    let e = s.err(&["image", "import", "--urn", "T:Backed:1:1.0.0", "--disk", backed.to_str().unwrap()]);
    assert!(e.contains("backing file"), "{e}");
    let e = s.err(&["image", "import", "--urn", "T:Kern:1:1.0.0", "--kernel", notes.to_str().unwrap()]);
    assert!(e.contains("kernel") && e.contains("not a Linux kernel"), "{e}");
    assert!(gallery_files(&data).is_empty(), "{:?}", gallery_files(&data));

    // A digest that does not match the body: refused, nothing kept.
    let disk = dir.path().join("disk.raw");
    raw_disk(&disk);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/v1/images/T:Raw:1:1.0.0/files/disk", s.url);
    let body = std::fs::read(&disk).unwrap();
    let (status, text) = rt.block_on(async {
        let r = s
            .http()
            .build()
            .unwrap()
            .put(&url)
            .bearer_auth(s.token())
            .header("X-Content-SHA256", "0".repeat(64))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("X-Content-SHA256") && text.contains("nothing was kept"), "{text}");
    assert!(gallery_files(&data).is_empty(), "{:?}", gallery_files(&data));
    // No digest at all: refused. (A short body: the server answers before reading any of it, so
    // a 2 MiB body could still be in flight and meet a closed connection instead of the answer.)
    let status = rt.block_on(async {
        s.http().build().unwrap().put(&url).bearer_auth(s.token()).body(vec![0u8; 512]).send().await.unwrap().status()
    });
    assert_eq!(status, 400);
    // Importing with nothing uploaded names what is missing.
    let (status, text) = rt.block_on(async {
        let r = s
            .http()
            .build()
            .unwrap()
            .put(format!("{}/v1/images/T:Raw:1:1.0.0", s.url))
            .bearer_auth(s.token())
            .json(&serde_json::json!({"uploaded": true}))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("nothing was uploaded"), "{text}");

    // A real upload works, and only the image's file stays.
    let out = s.json(&["image", "import", "--urn", "T:Raw:1:1.0.0", "--disk", disk.to_str().unwrap()]);
    assert_eq!(out["source"]["format"], "raw", "{out}");
    let files = gallery_files(&data);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), body);
    assert_eq!(out["source"]["path"], files[0].to_str().unwrap());
    // A kernel with its initrd.
    let mut kernel = vec![0u8; 8192];
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(dir.path().join("vmlinuz"), &kernel).unwrap();
    std::fs::write(dir.path().join("initrd.img"), b"070701 a cpio archive").unwrap();
    let out = s.json(&[
        "image",
        "import",
        "--urn",
        "T:Kernel:1:1.0.0",
        "--kernel",
        dir.path().join("vmlinuz").to_str().unwrap(),
        "--initrd",
        dir.path().join("initrd.img").to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
    ]);
    assert_eq!(out["source"]["kind"], "kernel", "{out}");
    assert_eq!(out["source"]["cmdline"], "console=ttyS0");
    assert_eq!(std::fs::read(out["source"]["kernel"].as_str().unwrap()).unwrap(), kernel);
    // Deleting the images leaves an empty gallery.
    s.ok(&["image", "delete", "--urn", "T:Raw:1:1.0.0"]);
    s.ok(&["image", "delete", "--urn", "T:Kernel:1:1.0.0"]);
    assert!(gallery_files(&data).is_empty(), "{:?}", gallery_files(&data));
}

/// A process image: an executable `init` and a page.
fn process_image(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("init"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(dir.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("www/index.html"), "hello").unwrap();
}

#[test]
fn a_directory_is_uploaded_and_a_server_side_one_needs_import_roots() {
    let (dir, data, s) = sim_server(None);
    let img = dir.path().join("img");
    process_image(&img);

    // The server reads no directory of the client's choosing: not /etc, not its own data dir.
    for path in ["/etc", data.to_str().unwrap(), img.to_str().unwrap()] {
        let e = s.err(&["image", "import", "--urn", "Bad:Dir:1:1.0.0", "--server-path", "--dir", path]);
        assert!(e.contains("directory") && e.contains("[images] import_roots"), "{path}: {e}");
    }
    assert!(gallery_files(&data).is_empty(), "{:?}", gallery_files(&data));

    // Uploaded, the tree arrives whole, with its permissions.
    let v = s.json(&["image", "import", "--urn", "Good:Dir:1:1.0.0", "--dir", img.to_str().unwrap()]);
    assert_eq!(v["source"]["kind"], "directory", "{v}");
    let files = gallery_files(&data);
    let page = files.iter().find(|p| p.ends_with("www/index.html")).expect("the page is in the gallery");
    assert_eq!(std::fs::read_to_string(page).unwrap(), "hello");

    // A symlink in the tree is refused by the CLI before anything is sent, naming it.
    std::os::unix::fs::symlink("/etc/shadow", img.join("www/shadow")).unwrap();
    let e = s.err(&["image", "import", "--urn", "Bad:Link:1:1.0.0", "--dir", img.to_str().unwrap()]);
    assert!(e.contains("www/shadow") && e.contains("symbolic link"), "{e}");
    assert_eq!(s.json(&["image", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn an_uploaded_tar_with_a_link_or_an_escape_is_refused_and_leaves_nothing() {
    use sha2::Digest;
    let (dir, data, s) = sim_server(None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let send = |r: reqwest::RequestBuilder| {
        rt.block_on(async {
            let r = r.bearer_auth(s.token()).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let http = s.http().build().unwrap();
    let upload = |urn: &str, body: Vec<u8>| {
        let digest = hex::encode(sha2::Sha256::digest(&body));
        send(
            http.put(format!("{}/v1/images/{urn}/files/directory", s.url))
                .header("X-Content-SHA256", digest)
                .body(body),
        )
    };
    let import =
        |urn: &str| send(http.put(format!("{}/v1/images/{urn}", s.url)).json(&serde_json::json!({"uploaded": true})));
    let tar_with = |link: bool| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o755);
        b.append_data(&mut h, "init", &b"#!x"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        if link {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "key", data.join("secret.key")).unwrap();
        } else {
            h.set_size(1);
            h.set_mode(0o644);
            h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        }
        b.into_inner().unwrap()
    };
    for (urn, link, says) in [("T:Link:1:1.0.0", true, "symbolic link"), ("T:Esc:1:1.0.0", false, "leaves the image")] {
        let (status, body) = upload(urn, tar_with(link));
        assert_eq!(status, 201, "{body}");
        let (status, body) = import(urn);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(says) && body.contains("\"directory\""), "{body}");
    }
    // Not a tar at all: refused at upload.
    let (status, body) = upload("T:Junk:1:1.0.0", vec![0xff; 4096]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a tar archive"), "{body}");
    assert!(!dir.path().join("escape").exists());
    let left: Vec<_> = gallery_files(&data).into_iter().filter(|p| !p.to_string_lossy().contains("uploads")).collect();
    assert!(left.is_empty(), "a refused import leaves nothing in the gallery: {left:?}");
}

#[test]
fn a_server_side_directory_below_import_roots_is_copied_without_its_links() {
    let (dir, data, s) = sim_server(Some(|root| process_image(&root.join("img"))));
    let img = dir.path().join("images-in/img");
    let v = s.json(&["image", "import", "--urn", "Srv:Dir:1:1.0.0", "--server-path", "--dir", img.to_str().unwrap()]);
    assert_eq!(v["source"]["kind"], "directory", "{v}");
    std::os::unix::fs::symlink(data.join("api-token"), img.join("www/token")).unwrap();
    let e = s.err(&["image", "import", "--urn", "Srv:Dir:1:2.0.0", "--server-path", "--dir", img.to_str().unwrap()]);
    assert!(e.contains("www/token") && e.contains("symbolic link"), "{e}");
    let token = s.token();
    for f in gallery_files(&data) {
        assert_ne!(std::fs::read_to_string(&f).unwrap_or_default().trim(), token, "{f:?} holds the API token");
    }
}
