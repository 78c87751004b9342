//! `herd demo`: herd's main job in one command. It starts a real server on the process driver,
//! creates a 3-instance scale set spread over zones, shows each instance answering on its own
//! address, scales, deletes an instance, shows the activity log, and cleans up.

use crate::bench::sleeper_image;
use crate::cli::DemoArgs;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

const DEMO_INIT: &str = r#"#!/bin/sh
# herd demo image: each instance serves a page that names it.
mkdir -p www
echo "Hello from $HERD_COMPUTER_NAME (instance $HERD_INSTANCE_ID, hostname $(hostname)) on $HERD_ADDRESS" > www/index.html
if command -v python3 >/dev/null 2>&1; then
  exec python3 -m http.server 8080 --bind "$HERD_ADDRESS" --directory www
fi
exec sleep 86400
"#;

struct Demo {
    exe: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Demo {
    /// Prints a command as a user would type it, runs it, and shows what came back.
    fn run(&self, args: &[&str]) -> Result<String> {
        println!(
            "\n$ herd {}",
            args.iter()
                .map(|a| if a.contains([' ', '*', '[', '?', '!', '\'']) { format!("'{a}'") } else { a.to_string() })
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = std::process::Command::new(&self.exe)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stderr(Stdio::inherit())
            .output()
            .context("running herd")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            bail!("'herd {}' failed", args.join(" "));
        }
        Ok(text)
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let base = std::env::temp_dir().join(format!("herd-demo-{}", args.port));
    let data = base.join("data");
    let image = base.join("image");
    let _ = std::fs::remove_dir_all(&base);
    sleeper_image(&image)?;
    std::fs::write(image.join("init"), DEMO_INIT)?;
    std::fs::set_permissions(image.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let url = format!("http://127.0.0.1:{}", args.port);
    println!("== herd demo: a scale set of 3 instances on the process driver ==");
    println!("$ herd server --data-dir {} --listen 127.0.0.1:{} --driver process &", data.display(), args.port);
    let mut server = std::process::Command::new(&exe)
        .args(["server", "--driver", "process", "--listen", &format!("127.0.0.1:{}", args.port)])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting herd server")?;
    let demo = Demo {
        exe: exe.clone(),
        env: vec![("HERD_SERVER".into(), url.clone()), ("HERD_DATA_DIR".into(), data.display().to_string())],
    };
    let result = play(&demo, &url, &image).await;
    if args.keep && result.is_ok() {
        println!("\nThe server keeps running (pid {}). Try:\n  export HERD_SERVER={url} HERD_DATA_DIR={}\n  herd vmss list-instances -g demo-rg -n web -o table", server.id(), data.display());
        return Ok(());
    }
    if result.is_ok() {
        let _ = demo.run(&["vmss", "delete", "-g", "demo-rg", "-n", "web"]);
    }
    let _ = std::process::Command::new("kill").arg(server.id().to_string()).status();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&base);
    println!("\nDemo finished; server stopped and files removed.");
    result
}

async fn play(demo: &Demo, url: &str, image: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    while reqwest::get(format!("{url}/healthz")).await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the demo server did not start on {url}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    demo.run(&["group", "create", "-n", "demo-rg", "-l", "local", "-o", "table"])?;
    demo.run(&["image", "import", "--urn", "Herd:Demo:1:1.0.0", "--dir", &image.display().to_string(), "-o", "table"])?;
    demo.run(&[
        "vmss",
        "create",
        "-g",
        "demo-rg",
        "-n",
        "web",
        "--image",
        "Herd:Demo:1:latest",
        "--instance-count",
        "3",
        "--vm-sku",
        "Standard_B1ms",
        "--zones",
        "1",
        "2",
        "3",
        "--upgrade-policy-mode",
        "Manual",
        "-o",
        "table",
    ])?;
    demo.run(&["vmss", "list-instances", "-g", "demo-rg", "-n", "web", "-o", "table"])?;
    let addrs =
        demo.run(&["vmss", "list-instances", "-g", "demo-rg", "-n", "web", "--query", "[].reachAddress", "-o", "tsv"])?;
    println!("\n# each instance serves a page on its own loopback address:");
    for addr in addrs.split_whitespace() {
        let page = fetch(&format!("http://{addr}:8080/")).await;
        println!("$ curl http://{addr}:8080/\n{page}");
    }
    demo.run(&["vmss", "scale", "-g", "demo-rg", "-n", "web", "--new-capacity", "5", "-o", "table"])?;
    let ids = demo.run(&[
        "vmss",
        "list-instances",
        "-g",
        "demo-rg",
        "-n",
        "web",
        "--query",
        "[?!overprovisioned].instanceId",
        "-o",
        "tsv",
    ])?;
    let first = ids.split_whitespace().next().unwrap_or("0").to_string();
    demo.run(&["vmss", "delete-instances", "-g", "demo-rg", "-n", "web", "--instance-ids", &first, "-o", "none"])?;
    demo.run(&["vmss", "list-instances", "-g", "demo-rg", "-n", "web", "-o", "table"])?;
    demo.run(&["monitor", "activity-log", "list", "-g", "demo-rg", "-o", "table"])?;
    Ok(())
}

async fn fetch(url: &str) -> String {
    let start = Instant::now();
    loop {
        match reqwest::get(url).await {
            Ok(r) => return r.text().await.unwrap_or_default().trim().to_string(),
            Err(e) if start.elapsed() > Duration::from_secs(10) => return format!("(no answer: {e})"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
