//! `svc-overlay demo --config FILE --listen-base P --admin-base Q`: the nodes start from
//! the file and listen on fixed ports, so a Prometheus or a dashboard can be pointed at
//! known URLs.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::wire::OapClient;
use e2e::{bin, http, poll_until, prom};

const WAIT: Duration = Duration::from_secs(30);

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A base port with `n` free ports after it, as far as binding them now can tell.
fn free_base(n: u16) -> u16 {
    loop {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > u16::MAX - n {
            continue;
        }
        let held: Vec<_> = (base..base + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
}

#[test]
fn demo_nodes_take_the_config_file_and_fixed_ports() {
    let dir = std::env::temp_dir().join(format!("svc-overlay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("demo.toml");
    // A key whose effect is visible from outside: a client may name one topic.
    std::fs::write(&file, "[overlay]\nmax_topics = 1\n").unwrap();
    let listen = free_base(2);
    let admin = loop {
        let b = free_base(2);
        if b.abs_diff(listen) >= 2 {
            break b;
        }
    };
    let demo = Demo(
        Command::new(bin())
            .args(["demo", "--nodes", "2", "--config"])
            .arg(&file)
            .args(["--listen-base", &listen.to_string()])
            .args(["--admin-base", &admin.to_string()])
            .env_remove("SVC_OVERLAY_AUTH__REQUIRED")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for i in 0..2u16 {
        let a: SocketAddr = format!("127.0.0.1:{}", admin + i).parse().unwrap();
        poll_until("the demo's admin plane on its fixed port", WAIT, || {
            http::get(a, "/readyz", &[])
                .ok()
                .filter(|r| r.status == 200)
        });
    }
    let node0: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let refused = OapClient::connect(node0, "two-topics", &["a", "b"], None).err();
    assert_eq!(
        refused.map(|(code, _)| code),
        Some(400),
        "overlay.max_topics from the file"
    );
    assert!(OapClient::connect(node0, "one-topic", &["a"], None).is_ok());
    let a0: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let m = prom::parse(&http::get(a0, "/metrics", &[]).unwrap().body).unwrap();
    assert!(
        m.value("rejected_total", &[("reason", "proto")])
            .unwrap_or(0.0)
            >= 1.0
    );
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}
