//! Whole-binary tests: the real `lk server` on a free port, driven by the real `lk`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LK: &str = env!("CARGO_BIN_EXE_lk");

struct Server {
    child: Child,
    addr: String,
    root: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `lk server --dev` on a free port and waits until its health check passes.
    fn start_dev(data_dir: &Path, expect_token: bool) -> Server {
        Server::start_dev_with(data_dir, expect_token, &[])
    }

    fn start_dev_with(data_dir: &Path, expect_token: bool, extra: &[&str]) -> Server {
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(LK)
            .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines
            .next()
            .unwrap()
            .unwrap()
            .strip_prefix("export LATCHKEY_ADDR=")
            .unwrap()
            .to_string();
        let root = expect_token.then(|| {
            lines
                .next()
                .unwrap()
                .unwrap()
                .strip_prefix("export LATCHKEY_TOKEN=")
                .unwrap()
                .to_string()
        });
        // Anything more on stdout would be a second token line; keep reading in the background.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let server = Server {
            child,
            addr,
            root,
            data_dir: data_dir.to_path_buf(),
            log,
        };
        server.wait_healthy();
        assert!(receiver.try_recv().is_err(), "no more lines on stdout");
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = self.lk(None, &["status"], None);
            if output.status.success()
                && String::from_utf8_lossy(&output.stdout).contains("status:       ok")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not become healthy: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lk(&self, token: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Output {
        lk_at(
            &self.addr,
            token,
            &self.data_dir.with_extension("config"),
            args,
            stdin,
            &[],
        )
    }

    fn root(&self, args: &[&str]) -> Output {
        let output = self.lk(self.root.as_deref(), args, None);
        assert!(
            output.status.success(),
            "lk {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn stop(mut self) {
        let _ = nix_kill(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_kill(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
}

fn lk_at(
    addr: &str,
    token: Option<&str>,
    config_dir: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new(LK);
    command
        .args(args)
        .env("LATCHKEY_ADDR", addr)
        .env("LATCHKEY_CONFIG_DIR", config_dir)
        .env_remove("LATCHKEY_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("LATCHKEY_TOKEN", token);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

const STAGING_POLICY: &str = r#"// Developers read staging secrets.
permit(
    principal in Group::"devs",
    action == Action::"read",
    resource
) when { resource.vault.hasTag("env") && resource.vault.getTag("env") == "staging" };
"#;

/// Sets up the quickstart: two vaults, a policy, alice in devs; returns alice's token.
fn quickstart(server: &Server, work: &Path) -> String {
    server.root(&["vault", "create", "prod", "--tag", "env=prod"]);
    server.root(&["vault", "create", "staging", "--tag", "env=staging"]);
    server.root(&[
        "secret",
        "put",
        "lk://prod/db",
        "username=app",
        "password=prod-Secret-0451",
    ]);
    server.root(&[
        "secret",
        "put",
        "lk://staging/db",
        "username=app",
        "password=staging-Secret-7781",
    ]);
    let policy = work.join("devs.cedar");
    std::fs::write(&policy, STAGING_POLICY).unwrap();
    server.root(&[
        "policy",
        "set",
        "devs-read-staging",
        "--file",
        policy.to_str().unwrap(),
    ]);
    server.root(&["user", "create", "alice", "--group", "devs"]);
    let output = server.root(&[
        "token",
        "create",
        "--user",
        "alice",
        "--ttl",
        "15m",
        "--max-ttl",
        "1h",
    ]);
    let token = stdout(&output).trim().to_string();
    assert!(token.starts_with("lkt_"), "{token}");
    token
}

#[test]
fn quickstart_allows_denies_runs_and_audits() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    let alice = quickstart(&server, work.path());

    let output = server.lk(Some(&alice), &["read", "lk://staging/db/password"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "staging-Secret-7781");

    let output = server.lk(Some(&alice), &["read", "lk://prod/db/password"], None);
    assert_eq!(output.status.code(), Some(4), "permission denied exit code");
    assert!(
        stderr(&output)
            .contains(r#"permission denied: User::"alice" may not `read` Secret::"prod/db""#),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).is_empty());

    let output = server.lk(Some(&alice), &["read", "lk://staging//password"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("secret name is empty"),
        "{}",
        stderr(&output)
    );

    let output = server.lk(Some("lkt_bogus"), &["whoami"], None);
    assert_eq!(output.status.code(), Some(3));

    let output = server.lk(Some(&alice), &["whoami"], None);
    assert!(stdout(&output).contains(r#"User::"alice""#));
    assert!(stdout(&output).contains("devs"));

    // lk run: masked by default, visible with --no-masking, exit code passed through.
    let script = "echo \"db=$DB_PASSWORD\"; echo \"db=$DB_PASSWORD\" >&2; exit 3";
    let mut command = Command::new(LK);
    let output = command
        .args(["run", "--", "sh", "-c", script])
        .env("LATCHKEY_ADDR", &server.addr)
        .env("LATCHKEY_TOKEN", &alice)
        .env("DB_PASSWORD", "lk://staging/db/password")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(stdout(&output), "db=***\n");
    assert_eq!(stderr(&output), "db=***\n");
    let output = Command::new(LK)
        .args(["run", "--no-masking", "--", "sh", "-c", "echo $DB_PASSWORD"])
        .env("LATCHKEY_ADDR", &server.addr)
        .env("LATCHKEY_TOKEN", &alice)
        .env("DB_PASSWORD", "lk://staging/db/password")
        .output()
        .unwrap();
    assert_eq!(stdout(&output), "staging-Secret-7781\n");
    let output = Command::new(LK)
        .args(["run", "--", "true"])
        .env("LATCHKEY_ADDR", &server.addr)
        .env("LATCHKEY_TOKEN", &alice)
        .env("DB_PASSWORD", "lk://prod/db/password")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(4),
        "a denied reference stops lk run before the command starts"
    );

    let bad = work.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit(principal, action == Action::\"raed\", resource);\n",
    )
    .unwrap();
    let output = server.lk(None, &["policy", "validate", bad.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("line 1"), "{}", stderr(&output));

    let output = server.root(&["audit", "verify"]);
    assert!(
        stdout(&output).contains("audit chain intact"),
        "{}",
        stdout(&output)
    );
    let output = server.root(&["audit", "tail", "-n", "50"]);
    let tail = stdout(&output);
    assert!(tail.contains("denied"), "{tail}");
    assert!(tail.contains("devs-read-staging"), "{tail}");

    // Nothing the server wrote contains a token or a secret value.
    let export = server.root(&["audit", "export"]);
    let root = server.root.clone().unwrap();
    server.stop();
    let log = std::fs::read_to_string(work.path().join("data.log")).unwrap();
    for haystack in [log.as_str(), &stdout(&export)] {
        for needle in [
            alice.as_str(),
            root.as_str(),
            "staging-Secret-7781",
            "prod-Secret-0451",
        ] {
            assert!(
                !haystack.contains(needle),
                "found a secret or token in server output"
            );
        }
    }
    assert!(log.contains("listening"), "the log was captured");
}

#[test]
fn binary_values_and_dotenv_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    server.root(&["vault", "create", "app"]);

    let binary: Vec<u8> = (0..=255u8).chain(b"\r\n\0end".iter().copied()).collect();
    let file = work.path().join("blob.bin");
    std::fs::write(&file, &binary).unwrap();
    server.root(&[
        "secret",
        "put",
        "lk://app/blobs",
        &format!("file=@{}", file.display()),
    ]);
    let output = server.lk(
        server.root.as_deref(),
        &["secret", "put", "lk://app/blobs", "stdin=-", "--merge"],
        Some(&binary),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    for field in ["file", "stdin"] {
        let output = server.root(&["read", &format!("lk://app/blobs/{field}")]);
        assert_eq!(output.stdout, binary, "field {field}");
    }
    let output = server.root(&["secret", "history", "lk://app/blobs"]);
    assert!(stdout(&output).contains("file,stdin"));
    let output = server.root(&["read", "lk://app/blobs/file?version=1"]);
    assert_eq!(output.stdout, binary);

    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n-----END PRIVATE KEY-----";
    let env_text = format!(
        "# application settings\nexport PRIVATE_KEY=\"{pem}\"\nDATABASE_URL=postgres://app:p%40ss@db:5432/app?sslmode=require&x=1\nEMPTY=\nQUOTED=\"say \\\"hello\\\"\"\nGREETING=\"héllo wörld ✓ 日本\"\nSINGLE='raw $HOME \"as written\"'\n"
    );
    let expected: Vec<(&str, String)> = vec![
        ("PRIVATE_KEY", pem.to_string()),
        (
            "DATABASE_URL",
            "postgres://app:p%40ss@db:5432/app?sslmode=require&x=1".to_string(),
        ),
        ("EMPTY", String::new()),
        ("QUOTED", "say \"hello\"".to_string()),
        ("GREETING", "héllo wörld ✓ 日本".to_string()),
        ("SINGLE", "raw $HOME \"as written\"".to_string()),
    ];
    let env_file = work.path().join("app.env");
    std::fs::write(&env_file, env_text).unwrap();
    let output = server.root(&[
        "secret",
        "import",
        "--vault",
        "app",
        env_file.to_str().unwrap(),
    ]);
    let references = work.path().join("refs.env");
    std::fs::write(&references, &output.stdout).unwrap();
    assert!(
        stdout(&output).contains("PRIVATE_KEY=lk://app/PRIVATE_KEY/value"),
        "{}",
        stdout(&output)
    );

    for (key, value) in &expected {
        let output = server.root(&["read", &format!("lk://app/{key}/value")]);
        assert_eq!(stdout(&output), *value, "read {key}");
        let output = lk_at(
            &server.addr,
            server.root.as_deref(),
            work.path(),
            &[
                "run",
                "--no-masking",
                "--env-file",
                references.to_str().unwrap(),
                "--",
                "printenv",
                key,
            ],
            None,
            &[(key, "inherited value loses")],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout(&output), format!("{value}\n"), "lk run {key}");
    }

    // Each line of a multi-line value is masked.
    let output = lk_at(
        &server.addr,
        server.root.as_deref(),
        work.path(),
        &[
            "run",
            "--env-file",
            references.to_str().unwrap(),
            "--",
            "printenv",
            "PRIVATE_KEY",
        ],
        None,
        &[],
    );
    let shown = stdout(&output);
    assert!(
        !shown.contains("MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"),
        "{shown}"
    );
    assert_eq!(shown, "***\n", "the whole value is masked");

    // A line of a multi-line value printed on its own is masked too.
    let output = lk_at(
        &server.addr,
        server.root.as_deref(),
        work.path(),
        &[
            "run",
            "--env-file",
            references.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo \"$PRIVATE_KEY\" | sed -n 2p",
        ],
        None,
        &[],
    );
    assert_eq!(stdout(&output), "***\n");

    let bad_env = work.path().join("bad.env");
    std::fs::write(&bad_env, "GOOD=1\nKEY=\"never closed\n").unwrap();
    let output = server.lk(
        server.root.as_deref(),
        &[
            "secret",
            "import",
            "--vault",
            "app",
            bad_env.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
    let output = server.lk(
        server.root.as_deref(),
        &["read", "lk://app/GOOD/value"],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(5),
        "a rejected env file imports nothing"
    );

    // lk inject writes a 0600 file.
    let template = work.path().join("config.tmpl");
    std::fs::write(&template, "url: {{ lk://app/DATABASE_URL/value }}\ngreeting: {{lk://app/GREETING/value}}\nhelm: {{ .Values.x }}\n").unwrap();
    let rendered = work.path().join("config.yaml");
    server.root(&[
        "inject",
        "-i",
        template.to_str().unwrap(),
        "-o",
        rendered.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&rendered).unwrap(),
        "url: postgres://app:p%40ss@db:5432/app?sslmode=require&x=1\ngreeting: héllo wörld ✓ 日本\nhelm: {{ .Values.x }}\n"
    );
    assert_eq!(
        std::fs::metadata(&rendered).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn restart_keeps_data_and_prints_no_new_token() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server = Server::start_dev(&data, true);
    let root = server.root.clone().unwrap();
    server.root(&["vault", "create", "v"]);
    server.root(&["secret", "put", "lk://v/s", "f=kept"]);
    server.stop();

    let mut again = Server::start_dev(&data, false);
    again.root = Some(root);
    assert_eq!(stdout(&again.root(&["read", "lk://v/s/f"])), "kept");
    again.root(&["audit", "verify"]);
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server = Server::start_dev(&data, true);
    let root = server.root.clone().unwrap();
    server.root(&["vault", "create", "v"]);
    let addr = server.addr.clone();
    let config = work.path().join("config");

    let writer = {
        let root = root.clone();
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for i in 0..400 {
                let output = lk_at(
                    &addr,
                    Some(&root),
                    &config,
                    &["secret", "put", "lk://v/s", &format!("f=value-{i}")],
                    None,
                    &[],
                );
                if !output.status.success() {
                    break;
                }
                acknowledged.push(i);
            }
            acknowledged
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    nix_kill(server.child.id(), "KILL").unwrap();
    let acknowledged = writer.join().unwrap();
    assert!(
        !acknowledged.is_empty(),
        "some writes were acknowledged before the kill"
    );
    drop(server);

    let mut again = Server::start_dev(&data, false);
    again.root = Some(root);
    for i in &acknowledged {
        let output = again.root(&["read", &format!("lk://v/s/f?version={}", i + 1)]);
        assert_eq!(stdout(&output), format!("value-{i}"));
    }
    let output = again.root(&["audit", "verify"]);
    assert!(stdout(&output).contains("audit chain intact"));
}

#[tokio::test]
async fn audit_verify_names_the_first_tampered_event() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server = Server::start_dev(&data, true);
    quickstart(&server, work.path());
    let export = work.path().join("audit.jsonl");
    server.root(&["audit", "export", "-o", export.to_str().unwrap()]);
    let output = server.root(&["audit", "verify", "--file", export.to_str().unwrap()]);
    assert!(stdout(&output).contains("audit chain intact"));

    // An export with one event removed fails offline.
    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut cut = lines.clone();
    cut.remove(3);
    let cut_file = work.path().join("cut.jsonl");
    std::fs::write(&cut_file, cut.join("\n")).unwrap();
    let output = server.lk(
        None,
        &["audit", "verify", "--file", cut_file.to_str().unwrap()],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("sequence 4"),
        "{}",
        stderr(&output)
    );

    // An edited row in the live store fails too.
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("latchkey.db").display()))
            .await
            .unwrap();
    sqlx::query("UPDATE audit_events SET principal = 'User::\"mallory\"' WHERE seq = 6")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let output = server.lk(server.root.as_deref(), &["audit", "verify"], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("audit chain broken at sequence 6"),
        "{}",
        stderr(&output)
    );
}

fn write_tls_files(dir: &Path) -> (PathBuf, PathBuf) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn production_mode_requires_tls_and_unseals_with_shares() {
    let work = tempfile::tempdir().unwrap();
    let plain = work.path().join("plain.toml");
    std::fs::write(
        &plain,
        format!("data_dir = \"{}\"\n", work.path().join("data").display()),
    )
    .unwrap();
    let output = Command::new(LK)
        .args(["server", "--config", plain.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("TLS is required"),
        "{}",
        stderr(&output)
    );

    let (cert, key) = write_tls_files(work.path());
    let config = work.path().join("latchkey.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            work.path().join("data").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    // The config listens on port 0, so find the port from the log line.
    let log = work.path().join("server.log");
    let mut child = Command::new(LK)
        .args(["server", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("listening")) {
            let port = line
                .split("127.0.0.1:")
                .nth(1)
                .unwrap()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap();
            break format!("https://127.0.0.1:{port}");
        }
        assert!(Instant::now() < deadline, "no listening line: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let cacert = cert.to_str().unwrap();
    let run = |token: Option<&str>, args: &[&str], stdin: Option<&[u8]>| {
        lk_at(
            &addr,
            token,
            work.path(),
            args,
            stdin,
            &[("LATCHKEY_CACERT", cacert)],
        )
    };

    let output = run(
        None,
        &[
            "operator",
            "init",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--format",
            "json",
        ],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let init: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let root = init["root_token"].as_str().unwrap().to_string();
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();

    let output = run(Some(&root), &["vault", "create", "x"], None);
    assert_eq!(output.status.code(), Some(6), "sealed: {}", stderr(&output));
    let output = run(None, &["status"], None);
    assert!(
        stdout(&output).contains("sealed:       true"),
        "{}",
        stdout(&output)
    );

    let output = run(
        None,
        &["operator", "unseal", "--stdin"],
        Some(shares[2].as_bytes()),
    );
    assert!(stdout(&output).contains("1/2"), "{}", stderr(&output));
    let output = run(
        None,
        &["operator", "unseal", "--stdin"],
        Some(b"lkshare_garbage"),
    );
    assert_eq!(output.status.code(), Some(2));
    let output = run(
        None,
        &["operator", "unseal", "--stdin"],
        Some(shares[0].as_bytes()),
    );
    assert_eq!(stdout(&output).trim(), "unsealed");
    let output = run(Some(&root), &["vault", "create", "x"], None);
    assert!(output.status.success(), "{}", stderr(&output));

    let output = lk_at(
        &addr,
        Some(&root),
        work.path(),
        &["vault", "list"],
        None,
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(6),
        "an untrusted certificate is refused"
    );

    let _ = nix_kill(child.id(), "TERM");
    let _ = child.wait();
}

#[test]
fn login_stores_the_token_privately() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    let alice = quickstart(&server, work.path());
    let output = server.lk(None, &["login", "--token", &alice], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let file = work.path().join("data.config").join("token");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let output = server.lk(None, &["read", "lk://staging/db/username"], None);
    assert_eq!(stdout(&output), "app");
    let output = server.lk(None, &["logout"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!file.exists());
    let output = server.lk(Some(&alice), &["whoami"], None);
    assert_eq!(output.status.code(), Some(3), "logout revoked the token");
    let output = server.lk(None, &["login", "--token", "lkt_short"], None);
    assert_eq!(output.status.code(), Some(2));
}

/// Returns the URL of the PostgreSQL server CI provides, or `LATCHKEY_TEST_POSTGRES_URL`.
fn postgres_base_url() -> String {
    std::env::var("LATCHKEY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Creates an empty database `name` (dropping a leftover one) and returns an admin pool
/// on the base database together with the new database's URL.
async fn fresh_database(name: &str) -> (sqlx::PgPool, String) {
    let base = postgres_base_url();
    let admin = sqlx::PgPool::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is required for this test: {e}"));
    drop_database(&admin, name).await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    (admin, format!("{prefix}/{name}"))
}

async fn drop_database(admin: &sqlx::PgPool, name: &str) {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn quickstart_runs_on_postgres() {
    let database = format!("latchkey_cli_{}", std::process::id());
    let (admin, url) = fresh_database(&database).await;

    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server = Server::start_dev_with(&data, true, &["--storage-url", &url]);
    let alice = quickstart(&server, work.path());
    let output = server.lk(Some(&alice), &["read", "lk://staging/db/password"], None);
    assert_eq!(stdout(&output), "staging-Secret-7781");
    let output = server.lk(Some(&alice), &["read", "lk://prod/db/password"], None);
    assert_eq!(output.status.code(), Some(4));
    let output = server.root(&["audit", "verify"]);
    assert!(stdout(&output).contains("audit chain intact"));
    assert!(
        !data.join("latchkey.db").exists(),
        "nothing was written to SQLite"
    );
    let root = server.root.clone();
    server.stop();

    // A restart on the same database keeps everything.
    let mut again = Server::start_dev_with(&data, false, &["--storage-url", &url]);
    again.root = root;
    assert_eq!(
        stdout(&again.root(&["read", "lk://prod/db/password"])),
        "prod-Secret-0451"
    );
    again.stop();

    let log = std::fs::read_to_string(work.path().join("data.log")).unwrap();
    assert!(log.contains("storage: PostgreSQL"), "{log}");
    drop_database(&admin, &database).await;
}

#[test]
fn logout_revokes_the_stored_token() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    let alice = quickstart(&server, work.path());
    server.lk(None, &["login", "--token", &alice], None);

    // LATCHKEY_TOKEN contains the root token while alice's token is the stored one.
    let output = server.lk(server.root.as_deref(), &["logout"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = server.lk(Some(&alice), &["whoami"], None);
    assert_eq!(
        output.status.code(),
        Some(3),
        "alice's stored token was revoked"
    );
    let output = server.lk(server.root.as_deref(), &["whoami"], None);
    assert!(
        output.status.success(),
        "the root token in the environment still works"
    );

    let output = server.lk(server.root.as_deref(), &["logout"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no stored token"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn secret_rm_refuses_field_and_version_references() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    server.root(&["vault", "create", "v"]);
    server.root(&["secret", "put", "lk://v/s", "a=1", "b=2"]);
    for reference in ["lk://v/s/a", "lk://v/s?version=1"] {
        let output = server.lk(server.root.as_deref(), &["secret", "rm", reference], None);
        assert_eq!(output.status.code(), Some(2), "{reference}");
        assert!(
            stderr(&output).contains("deletes the whole secret"),
            "{}",
            stderr(&output)
        );
    }
    assert_eq!(
        stdout(&server.root(&["read", "lk://v/s/b"])),
        "2",
        "nothing was deleted"
    );

    let output = server.lk(
        server.root.as_deref(),
        &["secret", "put", "lk://v/s", "a=1", "a=2"],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("given twice"),
        "{}",
        stderr(&output)
    );

    let output = server.lk(
        server.root.as_deref(),
        &["secret", "list", "lk://v/s"],
        None,
    );
    assert_eq!(output.status.code(), Some(2));

    server.root(&["secret", "rm", "lk://v/s"]);
    let output = server.lk(server.root.as_deref(), &["read", "lk://v/s/b"], None);
    assert_eq!(output.status.code(), Some(5));
}

#[test]
fn second_server_on_one_data_dir_fails() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let _first = Server::start_dev(&data, true);
    let output = Command::new(LK)
        .args(["server", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is in use by another `lk server`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn cli_messages_guide_the_user() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    server.root(&["user", "create", "bob"]);

    let output = server.lk(None, &["vault", "list"], None);
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains(
            "not signed in: run `lk login` (or `lk login --token TOKEN`, or set LATCHKEY_TOKEN)"
        ),
        "{}",
        stderr(&output)
    );

    let output = server.lk(
        server.root.as_deref(),
        &["token", "create", "--user", "bob", "--ttl", "-5m"],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("negative"), "{}", stderr(&output));

    let output = server.lk(
        server.root.as_deref(),
        &["token", "create", "--user", "bob", "--ttl", "2d"],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("`ttl` 2d is longer than the server's maximum of 1d"),
        "{}",
        stderr(&output)
    );

    // lk run keeps the token from the command it starts.
    let output = Command::new(LK)
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo token=${LATCHKEY_TOKEN:-unset}",
        ])
        .env("LATCHKEY_ADDR", &server.addr)
        .env("LATCHKEY_TOKEN", server.root.as_deref().unwrap())
        .output()
        .unwrap();
    assert_eq!(stdout(&output), "token=unset\n");

    let not_pem = work.path().join("not.pem");
    std::fs::write(&not_pem, "listen = 1\n").unwrap();
    let output = lk_at(
        &server.addr,
        server.root.as_deref(),
        work.path(),
        &["vault", "list"],
        None,
        &[("LATCHKEY_CACERT", not_pem.to_str().unwrap())],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("contains no PEM certificate"),
        "{}",
        stderr(&output)
    );
}

// Signed checkpoints, key export, ranged and CSV exports, search.

#[test]
fn audit_key_search_and_ranged_exports_verify() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    let alice = quickstart(&server, work.path());
    let denied = server.lk(Some(&alice), &["read", "lk://prod/db/password"], None);
    assert_eq!(denied.status.code(), Some(4), "{}", stderr(&denied));

    let key_file = work.path().join("audit-key.json");
    server.root(&["audit", "key", "-o", key_file.to_str().unwrap()]);
    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    assert_eq!(key["algorithm"], "ed25519");
    assert_eq!(key["key_id"].as_str().unwrap().len(), 16);
    let shown = server.lk(Some(&alice), &["audit", "key"], None);
    assert!(
        stdout(&shown).contains(key["key_id"].as_str().unwrap()),
        "{}",
        stderr(&shown)
    );

    let found = server.root(&[
        "--format",
        "json",
        "audit",
        "search",
        "--principal",
        "User::\"alice\"",
        "--outcome",
        "denied",
    ]);
    let lines: Vec<serde_json::Value> = stdout(&found)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for event in &lines {
        assert_eq!(event["principal"], "User::\"alice\"");
        assert_eq!(event["outcome"], "denied");
    }
    let bad = server.lk(
        server.root.as_deref(),
        &["audit", "search", "--since", "lately"],
        None,
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("`lately`"), "{}", stderr(&bad));

    let all = work.path().join("all.jsonl");
    server.root(&["audit", "export", "-o", all.to_str().unwrap()]);
    let verify = |file: &Path| {
        server.lk(
            None,
            &[
                "audit",
                "verify",
                "--file",
                file.to_str().unwrap(),
                "--public-key",
                key_file.to_str().unwrap(),
            ],
            None,
        )
    };
    let output = verify(&all);
    assert!(
        stdout(&output).contains("audit chain intact"),
        "{}",
        stderr(&output)
    );

    // A range starting at event 5 verifies from that event's `prev_hash`.
    let text = std::fs::read_to_string(&all).unwrap();
    let fifth: serde_json::Value = serde_json::from_str(text.lines().nth(4).unwrap()).unwrap();
    assert_eq!(fifth["seq"], 5);
    let ranged = work.path().join("ranged.jsonl");
    server.root(&[
        "audit",
        "export",
        "--since",
        fifth["time"].as_str().unwrap(),
        "--until",
        "2999-01-01T00:00:00Z",
        "-o",
        ranged.to_str().unwrap(),
    ]);
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&ranged)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["seq"], 5);
    let output = verify(&ranged);
    assert!(
        stdout(&output).contains("audit chain intact"),
        "{}",
        stderr(&output)
    );

    let csv = work.path().join("audit.csv");
    server.root(&[
        "audit",
        "export",
        "--since",
        "1h",
        "--file-format",
        "csv",
        "-o",
        csv.to_str().unwrap(),
    ]);
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let mut rows = csv_text.lines();
    assert!(
        rows.next()
            .unwrap()
            .starts_with("seq,time,request_id,principal")
    );
    assert!(rows.next().unwrap().starts_with("1,"));
}

/// Writes a signed export of `events` events with checkpoints at `at` and the key file;
/// returns the lines, the key file and the events.
fn signed_export(
    dir: &Path,
    signer: &latchkey_core::audit::AuditSigner,
    events: u64,
    at: &[u64],
) -> (Vec<String>, PathBuf, Vec<latchkey_core::audit::AuditEvent>) {
    use base64::Engine;
    use latchkey_core::audit::{AuditRecord, GENESIS_HASH, Outcome, seal_event};
    let mut prev = GENESIS_HASH;
    let mut chain = Vec::new();
    let mut lines = Vec::new();
    for seq in 1..=events {
        let record = AuditRecord {
            time: format!("2026-12-04T10:00:{:02}.000000Z", seq % 60),
            request_id: format!("req-{seq}"),
            principal: "User::\"alice\"".into(),
            action: "read".into(),
            resource: "Secret::\"prod/db\"".into(),
            outcome: Outcome::Allowed,
            reason: None,
            policies: vec![],
            client_addr: None,
            token_id: None,
            detail: Default::default(),
        };
        let event = seal_event(seq, &prev, record);
        prev = <[u8; 32]>::try_from(
            (0..32)
                .map(|i| u8::from_str_radix(&event.hash[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        lines.push(serde_json::to_string(&event).unwrap());
        if at.contains(&seq) {
            let cp = signer.sign(seq, &prev, chrono::Utc::now());
            lines.push(serde_json::json!({ "checkpoint": cp }).to_string());
        }
        chain.push(event);
    }
    let key = dir.join("key.json");
    std::fs::write(
        &key,
        serde_json::json!({
            "public_key": base64::engine::general_purpose::STANDARD.encode(signer.public_key()),
            "key_id": signer.key_id(),
            "algorithm": "ed25519",
        })
        .to_string(),
    )
    .unwrap();
    (lines, key, chain)
}

fn verify_offline(dir: &Path, name: &str, lines: &[String], key: &Path) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n")).unwrap();
    Command::new(LK)
        .args(["audit", "verify", "--file"])
        .arg(&file)
        .arg("--public-key")
        .arg(key)
        .env_remove("LATCHKEY_TOKEN")
        .env("LATCHKEY_CONFIG_DIR", dir.join("config"))
        .output()
        .unwrap()
}

fn assert_breaks_at(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", stdout(output));
    assert!(stderr(output).contains(needle), "{}", stderr(output));
}

#[test]
fn offline_verify_checks_checkpoint_signatures_heads_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (signer, _) = latchkey_core::audit::AuditSigner::generate().unwrap();
    let (lines, key, chain) = signed_export(dir.path(), &signer, 30, &[10, 20, 30]);
    let cp_line = |seq: u64| {
        lines
            .iter()
            .position(|l| {
                l.starts_with("{\"checkpoint\"") && l.contains(&format!("\"seq\":{seq},"))
            })
            .unwrap()
    };

    let output = verify_offline(dir.path(), "intact.jsonl", &lines, &key);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("3 signed checkpoints verified, the last at sequence 30"),
        "{}",
        stdout(&output)
    );

    // A forged signature.
    let mut forged = lines.clone();
    let i = cp_line(20);
    let mut cp: serde_json::Value = serde_json::from_str(&forged[i]).unwrap();
    cp["checkpoint"]["signature"] = serde_json::Value::String("11".repeat(64));
    forged[i] = cp.to_string();
    assert_breaks_at(
        &verify_offline(dir.path(), "forged.jsonl", &forged, &key),
        "audit checkpoint at sequence 20 failed: the checkpoint signature does not verify",
    );

    // A validly signed checkpoint whose head hash is not the chain's at that sequence.
    let mut moved = lines.clone();
    let i = cp_line(20);
    let wrong_head = <[u8; 32]>::try_from(
        (0..32)
            .map(|k| u8::from_str_radix(&chain[18].hash[2 * k..2 * k + 2], 16).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    moved[i] =
        serde_json::json!({ "checkpoint": signer.sign(20, &wrong_head, chrono::Utc::now()) })
            .to_string();
    assert_breaks_at(
        &verify_offline(dir.path(), "moved.jsonl", &moved, &key),
        "audit checkpoint at sequence 20 failed: the signed head hash differs",
    );

    // Events after event 25 cut off; the checkpoint at 30 remains.
    let mut cut: Vec<String> = lines
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("checkpoint").is_some() || v["seq"].as_u64().unwrap() <= 25
        })
        .cloned()
        .collect();
    assert_breaks_at(
        &verify_offline(dir.path(), "cut.jsonl", &cut, &key),
        "audit checkpoint at sequence 30 failed: the log ends at event 25",
    );
    // The whole tail cut, checkpoint included, is not detectable from the export alone;
    // removing only the checkpoint line leaves a valid shorter export.
    cut.retain(|l| !l.contains("\"seq\":30,"));
    assert_eq!(
        verify_offline(dir.path(), "cut2.jsonl", &cut, &key)
            .status
            .code(),
        Some(0)
    );

    // Edited, deleted and reordered events.
    let mut edited = lines.clone();
    edited[6] = edited[6].replace("req-7", "req-x");
    assert_breaks_at(
        &verify_offline(dir.path(), "edited.jsonl", &edited, &key),
        "audit chain broken at sequence 7",
    );
    let mut deleted = lines.clone();
    deleted.remove(3);
    assert_breaks_at(
        &verify_offline(dir.path(), "deleted.jsonl", &deleted, &key),
        "audit chain broken at sequence 4",
    );
    let mut reordered = lines.clone();
    reordered.swap(4, 5);
    assert_breaks_at(
        &verify_offline(dir.path(), "reordered.jsonl", &reordered, &key),
        "audit chain broken at sequence 5",
    );

    // Another server's key.
    let (other, _) = latchkey_core::audit::AuditSigner::generate().unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let (_, other_key, _) = signed_export(&dir.path().join("other"), &other, 1, &[]);
    assert_breaks_at(
        &verify_offline(dir.path(), "other.jsonl", &lines, &other_key),
        "audit checkpoint at sequence 10 failed: the checkpoint is signed by key",
    );
}

#[tokio::test]
async fn live_verify_rejects_a_forged_checkpoint() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server = Server::start_dev(&data, true);
    quickstart(&server, work.path());
    let output = server.root(&["audit", "verify"]);
    assert!(
        stdout(&output).contains("0 signed checkpoints verified"),
        "{}",
        stdout(&output)
    );
    let key: serde_json::Value =
        serde_json::from_str(&stdout(&server.root(&["--format", "json", "audit", "key"]))).unwrap();

    // A checkpoint with the server's key id and a made-up signature.
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("latchkey.db").display()))
            .await
            .unwrap();
    let head: (i64, String) =
        sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, head_hash, time, key_id, signature) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(head.0 - 2)
    .bind(&head.1)
    .bind("2026-12-04T10:00:00.000000Z")
    .bind(key["key_id"].as_str().unwrap())
    .bind("ab".repeat(64))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let output = server.lk(server.root.as_deref(), &["audit", "verify"], None);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stderr(&output).contains(&format!(
            "audit checkpoint at sequence {} failed: the checkpoint signature does not verify",
            head.0 - 2
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
fn audit_tail_shows_exactly_n_events() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    quickstart(&server, work.path());
    for n in ["1", "3", "10"] {
        let output = server.root(&["audit", "tail", "-n", n]);
        assert_eq!(
            stdout(&output).lines().count().to_string(),
            n,
            "{}",
            stdout(&output)
        );
    }
    // A reader that stops early, as `| head -1` does, ends the command quietly.
    for args in [&["audit", "tail", "-n", "10"][..], &["whoami"][..]] {
        let mut child = Command::new(LK)
            .args(args)
            .env("LATCHKEY_ADDR", &server.addr)
            .env(
                "LATCHKEY_CONFIG_DIR",
                server.data_dir.with_extension("config"),
            )
            .env("LATCHKEY_TOKEN", server.root.as_deref().unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "lk {args:?}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output), "", "lk {args:?}");
    }

    let not_json = work.path().join("notes.txt");
    std::fs::write(&not_json, "not an export\n").unwrap();
    let output = server.lk(
        None,
        &["audit", "verify", "--file", not_json.to_str().unwrap()],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
}

/// Polls `check` every 20 ms until it returns true, returning the time it took.
fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[tokio::test]
async fn two_servers_on_one_postgres_database_agree() {
    let database = format!("latchkey_two_nodes_{}", std::process::id());
    let (admin, url) = fresh_database(&database).await;

    let work = tempfile::tempdir().unwrap();
    let node_a = Server::start_dev_with(&work.path().join("a"), true, &["--storage-url", &url]);
    // Node B shares the database and the unseal key file, as a second replica would.
    std::fs::create_dir_all(work.path().join("b")).unwrap();
    std::fs::copy(
        work.path().join("a/unseal.key"),
        work.path().join("b/unseal.key"),
    )
    .unwrap();
    let mut node_b =
        Server::start_dev_with(&work.path().join("b"), false, &["--storage-url", &url]);
    node_b.root = node_a.root.clone();

    let alice = quickstart(&node_a, work.path());
    let delay = time_until(Duration::from_secs(5), || {
        stdout(&node_b.lk(Some(&alice), &["read", "lk://staging/db/password"], None))
            == "staging-Secret-7781"
    });
    eprintln!("new policy reached node B after {delay:?}");

    // A policy removed on A stops reads on B.
    node_a.root(&["policy", "rm", "devs-read-staging"]);
    let delay = time_until(Duration::from_secs(5), || {
        node_b
            .lk(Some(&alice), &["read", "lk://staging/db/password"], None)
            .status
            .code()
            == Some(4)
    });
    eprintln!("policy removal reached node B after {delay:?}");
    let policy = work.path().join("devs.cedar");
    node_b.root(&[
        "policy",
        "set",
        "devs-read-staging",
        "--file",
        policy.to_str().unwrap(),
    ]);
    time_until(Duration::from_secs(5), || {
        node_a
            .lk(Some(&alice), &["read", "lk://staging/db/password"], None)
            .status
            .success()
    });

    // A token revoked on A is refused by B.
    let me: serde_json::Value = serde_json::from_slice(
        &node_b
            .lk(Some(&alice), &["whoami", "--format", "json"], None)
            .stdout,
    )
    .unwrap();
    let accessor = me["token"]["accessor"].as_str().unwrap().to_string();
    node_a.root(&["token", "revoke", &accessor]);
    let delay = time_until(Duration::from_secs(5), || {
        node_b
            .lk(Some(&alice), &["read", "lk://staging/db/password"], None)
            .status
            .code()
            == Some(3)
    });
    eprintln!("revocation reached node B after {delay:?}");

    // Concurrent writes through both nodes leave one chain.
    let writers: Vec<_> = [&node_a, &node_b]
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let addr = node.addr.clone();
            let root = node.root.clone().unwrap();
            let config = work.path().join(format!("config-{n}"));
            std::thread::spawn(move || {
                for i in 0..25 {
                    let output = lk_at(
                        &addr,
                        Some(&root),
                        &config,
                        &["secret", "put", &format!("lk://prod/node{n}-{i}"), "f=v"],
                        None,
                        &[],
                    );
                    assert!(
                        output.status.success(),
                        "{}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    for node in [&node_a, &node_b] {
        let output = node.root(&["audit", "verify"]);
        assert!(
            stdout(&output).contains("audit chain intact"),
            "{}",
            stdout(&output)
        );
    }
    node_a.stop();
    node_b.stop();
    drop_database(&admin, &database).await;
}

/// Renames a database, terminating its connections first; retries while the server under
/// test reconnects in between.
async fn rename_database(admin: &sqlx::PgPool, from: &str, to: &str) {
    for _ in 0..100 {
        sqlx::query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{from}' AND pid <> pg_backend_pid()"
        ))
        .execute(admin)
        .await
        .unwrap();
        if sqlx::query(&format!("ALTER DATABASE {from} RENAME TO {to}"))
            .execute(admin)
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not rename database {from}");
}

#[tokio::test]
async fn database_outage_fails_closed_and_recovers() {
    let database = format!("latchkey_outage_{}", std::process::id());
    let parked = format!("{database}_parked");
    let (admin, url) = fresh_database(&database).await;
    drop_database(&admin, &parked).await;

    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev_with(&work.path().join("data"), true, &["--storage-url", &url]);
    server.root(&["vault", "create", "v"]);
    server.root(&["secret", "put", "lk://v/s", "f=outage-Secret-1"]);

    rename_database(&admin, &database, &parked).await;
    let output = server.lk(server.root.as_deref(), &["read", "lk://v/s/f"], None);
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    assert!(stdout(&output).is_empty());
    assert!(
        stderr(&output).contains("database is unreachable"),
        "{}",
        stderr(&output)
    );
    let output = server.lk(None, &["status"], None);
    assert_eq!(output.status.code(), Some(6));
    assert!(
        stdout(&output).contains("storage_unavailable"),
        "{}",
        stdout(&output)
    );

    rename_database(&admin, &parked, &database).await;
    let delay = time_until(Duration::from_secs(15), || {
        stdout(&server.lk(server.root.as_deref(), &["read", "lk://v/s/f"], None))
            == "outage-Secret-1"
    });
    eprintln!("reads recovered {delay:?} after the database returned");
    let output = server.root(&["audit", "verify"]);
    assert!(
        stdout(&output).contains("audit chain intact"),
        "{}",
        stdout(&output)
    );
    server.stop();
    drop_database(&admin, &database).await;
}

/// Runs `lk operator migrate` with `args`, with no server address needed.
fn migrate(args: &[&str]) -> Output {
    let mut command = Command::new(LK);
    command
        .args(["operator", "migrate"])
        .args(args)
        .env_remove("LATCHKEY_TOKEN")
        .env_remove("LATCHKEY_ADDR");
    command.output().unwrap()
}

/// Copies a stopped server's SQLite files into `to`, so the copy can be changed apart.
fn copy_sqlite_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("latchkey.db{suffix}");
        if from.join(&name).exists() {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
}

#[tokio::test]
async fn operator_migrate_moves_sqlite_to_postgres() {
    let database = format!("latchkey_migrate_{}", std::process::id());
    let tampered_database = format!("{database}_tampered");
    let (admin, url) = fresh_database(&database).await;
    let (_, tampered_url) = fresh_database(&tampered_database).await;

    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let server = Server::start_dev(&data, true);
    let alice = quickstart(&server, work.path());
    server.root(&["secret", "put", "lk://prod/db", "password=prod-Secret-0452"]);
    let short = stdout(&server.root(&["token", "create", "--user", "alice", "--ttl", "1s"]));
    assert!(short.starts_with("lkt_"));
    let key = work.path().join("audit-key.json");
    server.root(&["audit", "key", "-o", key.to_str().unwrap()]);
    let from = format!("sqlite:{}", data.join("latchkey.db").display());

    // The running server has the data directory locked, so the copy must wait until it stops.
    let output = migrate(&["--from", &from, "--to", &url]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is in use by a running `lk server`; stop it"),
        "{}",
        stderr(&output)
    );
    let root = server.root.clone();
    server.stop();

    // Bad input is a usage error that names the value.
    for (args, needle) in [
        (
            vec!["--from", "/var/lib/latchkey/latchkey.db", "--to", &url],
            "invalid `--from` `/var/lib/latchkey/latchkey.db`: give the SQLite database as sqlite:PATH",
        ),
        (
            vec!["--from", "sqlite:/nonexistent/latchkey.db", "--to", &url],
            "the source database `/nonexistent/latchkey.db` does not exist",
        ),
        (
            vec!["--from", &from, "--to", "mysql://root:hunter2@127.0.0.1/db"],
            "invalid `--to` `mysql://root:***@127.0.0.1/db`: invalid PostgreSQL URL: it must start with postgres://",
        ),
        (
            vec![
                "--from",
                &from,
                "--to",
                "postgres://u:hunter2@127.0.0.1:notaport/db",
            ],
            "invalid `--to` `postgres://u:***@127.0.0.1:notaport/db`: invalid PostgreSQL URL",
        ),
    ] {
        let output = migrate(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("hunter2"), "{}", stderr(&output));
    }

    // An edited audit event stops the copy, names its sequence number and writes nothing.
    let tampered = work.path().join("tampered");
    copy_sqlite_files(&data, &tampered);
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}",
        tampered.join("latchkey.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE audit_events SET outcome = 'denied' WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let tampered_from = format!("sqlite:{}", tampered.join("latchkey.db").display());
    let output = migrate(&["--from", &tampered_from, "--to", &tampered_url]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("audit chain broken at sequence 4:"),
        "{}",
        stderr(&output)
    );
    let vaults: i64 = sqlx::query_scalar("SELECT count(*) FROM vaults")
        .fetch_one(&sqlx::PgPool::connect(&tampered_url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(vaults, 0, "nothing was written");

    let output = migrate(&[
        "--from",
        &from,
        "--to",
        &url,
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    eprintln!("{}", stdout(&output));
    assert!(
        stdout(&output).contains("audit chain verified at the destination"),
        "{}",
        stdout(&output)
    );
    for (table, rows) in [("secret_versions", "3"), ("tokens", "3")] {
        assert!(
            stdout(&output).lines().any(|line| {
                let mut words = line.split_whitespace();
                words.next() == Some(table) && words.next() == Some(rows)
            }),
            "{}",
            stdout(&output)
        );
    }

    // A second copy into the same database is refused, naming it.
    let output = migrate(&["--from", &from, "--to", &url]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!(
            "refusing to copy into `{url}`: the destination database is not empty: table `meta` has rows"
        )),
        "{}",
        stderr(&output)
    );

    // A server on the copy accepts the old tokens, opens the old secrets and keeps the chain.
    let mut moved = Server::start_dev_with(&data, false, &["--storage-url", &url]);
    moved.root = root;
    let output = moved.lk(Some(&alice), &["read", "lk://staging/db/password"], None);
    assert_eq!(
        stdout(&output),
        "staging-Secret-7781",
        "{}",
        stderr(&output)
    );
    assert_eq!(
        stdout(&moved.root(&["read", "lk://prod/db/password"])),
        "prod-Secret-0452"
    );
    assert_eq!(
        stdout(&moved.root(&["read", "lk://prod/db/password?version=1"])),
        "prod-Secret-0451"
    );
    let output = moved.lk(Some(&alice), &["read", "lk://prod/db/password"], None);
    assert_eq!(output.status.code(), Some(4), "the policy came along");
    let output = moved.root(&["audit", "verify"]);
    assert!(
        stdout(&output).contains("audit chain intact"),
        "{}",
        stdout(&output)
    );
    moved.stop();
    let log = std::fs::read_to_string(work.path().join("data.log")).unwrap();
    assert!(log.contains("storage: PostgreSQL"), "{log}");
    drop_database(&admin, &database).await;
    drop_database(&admin, &tampered_database).await;
}

/// Returns the `token.expire` events that `lk audit search` lists, one line each.
fn expiry_events(node: &Server) -> Vec<String> {
    let output = node.root(&[
        "audit",
        "search",
        "--action",
        "token.expire",
        "--limit",
        "1000",
    ]);
    stdout(&output)
        .lines()
        .filter(|line| line.contains("token.expire"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn two_servers_record_each_token_expiry_once() {
    const TOKENS: usize = 8;
    let database = format!("latchkey_expiry_{}", std::process::id());
    let (admin, url) = fresh_database(&database).await;

    let work = tempfile::tempdir().unwrap();
    let node_a = Server::start_dev_with(&work.path().join("a"), true, &["--storage-url", &url]);
    std::fs::create_dir_all(work.path().join("b")).unwrap();
    std::fs::copy(
        work.path().join("a/unseal.key"),
        work.path().join("b/unseal.key"),
    )
    .unwrap();
    let mut node_b =
        Server::start_dev_with(&work.path().join("b"), false, &["--storage-url", &url]);
    node_b.root = node_a.root.clone();

    node_a.root(&["user", "create", "alice"]);
    for i in 0..TOKENS {
        let node = if i % 2 == 0 { &node_a } else { &node_b };
        node.root(&["token", "create", "--user", "alice", "--ttl", "1s"]);
    }
    let delay = time_until(Duration::from_secs(15), || {
        expiry_events(&node_a).len() >= TOKENS
    });
    eprintln!("{TOKENS} token expiries recorded after {delay:?}");

    // Several more ticks of both servers add nothing.
    std::thread::sleep(Duration::from_secs(3));
    let events = expiry_events(&node_b);
    assert_eq!(events.len(), TOKENS, "{events:#?}");
    let mut resources: Vec<&str> = events
        .iter()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with("Token::")))
        .collect();
    resources.sort_unstable();
    resources.dedup();
    assert_eq!(resources.len(), TOKENS, "one event per token: {events:#?}");
    assert!(
        events
            .iter()
            .all(|line| line.contains("system  token.expire")
                && line.contains("principal=User::\"alice\"")),
        "{events:#?}"
    );
    for node in [&node_a, &node_b] {
        let output = node.root(&["audit", "verify"]);
        assert!(
            stdout(&output).contains("audit chain intact"),
            "{}",
            stdout(&output)
        );
    }
    node_a.stop();
    node_b.stop();
    drop_database(&admin, &database).await;
}

/// The real OpenID Provider from `tests/oidc-provider` (npm `oidc-provider`), on free
/// 127.0.0.1 ports, with a redirect port for `lk login` to listen on.
struct Provider {
    child: Child,
    issuer: String,
    redirect_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Provider {
    fn start() -> Provider {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc-provider");
        // Installed once per test run, from the lock file, when CI has not done it already.
        static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        INSTALLED.get_or_init(|| {
            if dir.join("node_modules/oidc-provider").exists() {
                return;
            }
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .expect("npm installs the test OpenID Provider");
            assert!(status.success(), "`npm ci` in tests/oidc-provider failed");
        });
        let (port, redirect_port) = (free_port(), free_port());
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("REDIRECT_PORT", redirect_port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs the test OpenID Provider");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let issuer = line.strip_prefix("listening ").unwrap().to_string();
        // Keep draining its output: a closed pipe would kill it on its next warning.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Provider {
            child,
            issuer,
            redirect_port,
        }
    }

    /// Returns a workload identity token: the provider's JWT access token for
    /// `urn:latchkey`.
    fn workload_jwt(&self) -> String {
        let output = Command::new("curl")
            .args([
                "-s",
                "-u",
                "latchkey-ci:ci-secret",
                "-d",
                "grant_type=client_credentials",
            ])
            .args(["-d", "resource=urn:latchkey"])
            .arg(format!("{}/token", self.issuer))
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser driven with curl and a cookie jar: returns where a request redirects, or the
/// page body when `follow_body` is set.
fn browse(jar: &Path, url: &str, form: &[(&str, &str)], follow_body: bool) -> String {
    let mut command = Command::new("curl");
    command.arg("-s").arg("-b").arg(jar).arg("-c").arg(jar);
    if !follow_body {
        command.args(["-o", "/dev/null", "-w", "%{redirect_url}"]);
    }
    for (key, value) in form {
        command
            .arg("--data-urlencode")
            .arg(format!("{key}={value}"));
    }
    let output = command.arg(url).output().unwrap();
    assert!(output.status.success(), "curl {url} failed");
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Signs `user` in on the provider's login and consent forms, starting at `start`, and
/// returns the URL the provider finally redirects to.
fn sign_in_on_provider(jar: &Path, start: &str, user: &str) -> String {
    let login = browse(jar, start, &[], false);
    let resume = browse(
        jar,
        &login,
        &[("prompt", "login"), ("login", user), ("password", "any")],
        false,
    );
    let consent = browse(jar, &resume, &[], false);
    let resume = browse(jar, &consent, &[("prompt", "consent")], false);
    browse(jar, &resume, &[], false)
}

/// Starts `lk login ARGS` in the background and returns it with a reader of its stderr.
fn spawn_login(
    server: &Server,
    config_dir: &Path,
    args: &[&str],
) -> (Child, std::io::Lines<BufReader<std::process::ChildStderr>>) {
    let mut child = Command::new(LK)
        .arg("login")
        .args(args)
        .env("LATCHKEY_ADDR", &server.addr)
        .env("LATCHKEY_CONFIG_DIR", config_dir)
        .env_remove("LATCHKEY_TOKEN")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

fn finish(child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "lk login did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Signs a person in through `lk login` in a "browser" and returns lk's output.
fn browser_login(
    server: &Server,
    provider: &Provider,
    config: &Path,
    connector: &str,
    user: &str,
) -> Output {
    let port = provider.redirect_port.to_string();
    let (child, mut lines) = spawn_login(
        server,
        config,
        &["--connector", connector, "--port", &port, "--no-browser"],
    );
    let auth_url = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|line| {
            let line = line.trim();
            line.starts_with(&provider.issuer).then(|| line.to_string())
        })
        .expect("lk login prints the sign-in URL");
    assert!(
        auth_url.contains("code_challenge_method=S256"),
        "{auth_url}"
    );
    assert!(auth_url.contains("nonce="), "{auth_url}");
    let jar = config.with_extension("cookies");
    let callback = sign_in_on_provider(&jar, &auth_url, user);
    assert!(
        callback.starts_with(&format!("http://127.0.0.1:{port}/callback?code=")),
        "{callback}"
    );
    // The browser lands on lk's loopback listener, which shows a page and hands the code on.
    let page = browse(&jar, &callback, &[], true);
    let output = finish(child);
    let mut rest = String::new();
    for line in lines.map_while(Result::ok) {
        rest.push_str(&line);
        rest.push('\n');
    }
    // The page shows the server's verdict, not just that a code arrived.
    let expected = if output.status.success() {
        "Signed in."
    } else {
        "Sign-in failed."
    };
    assert!(page.contains(expected), "{page}");
    Output {
        status: output.status,
        stdout: output.stdout,
        stderr: rest.into_bytes(),
    }
}

#[test]
fn oidc_browser_and_device_sign_in() {
    let provider = Provider::start();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    let port = provider.redirect_port.to_string();
    let secret = work.path().join("client-secret");
    std::fs::write(&secret, "latchkey-secret\n").unwrap();
    server.root(&[
        "auth",
        "oidc",
        "set",
        "corp",
        "--issuer",
        &provider.issuer,
        "--client-id",
        "latchkey",
        "--client-secret-file",
        secret.to_str().unwrap(),
        "--scope",
        "openid",
        "--scope",
        "email",
        "--scope",
        "groups",
        "--groups-claim",
        "groups",
        "--redirect-port",
        &port,
        "--ttl",
        "8h",
    ]);
    server.root(&[
        "auth",
        "oidc",
        "set",
        "corp-cli",
        "--issuer",
        &provider.issuer,
        "--client-id",
        "latchkey-cli",
        "--scope",
        "groups",
        "--groups-claim",
        "groups",
        "--redirect-port",
        &port,
    ]);
    let listed = stdout(&server.root(&["auth", "list"]));
    assert!(
        listed.contains("corp-cli") && listed.contains("client latchkey"),
        "{listed}"
    );
    let shown = stdout(&server.root(&["auth", "oidc", "show", "corp"]));
    assert!(shown.contains("client secret      stored"), "{shown}");
    assert!(!shown.contains("latchkey-secret"), "{shown}");

    // Developers read staging, from the shipped example policy.
    server.root(&["vault", "create", "staging", "--tag", "env=staging"]);
    server.root(&["secret", "put", "lk://staging/db", "password=from-vault"]);
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policies/people-from-the-provider.cedar");
    server.root(&[
        "policy",
        "set",
        "people",
        "--file",
        policy.to_str().unwrap(),
    ]);

    // Alice signs in with the browser flow on the confidential client.
    let alice_config = work.path().join("alice");
    let output = browser_login(&server, &provider, &alice_config, "corp", "alice");
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    assert!(
        shown.contains("signed in as User::\"alice\" (browser sign-in through OIDC connector `corp`; groups: admins, devs)"),
        "{shown}"
    );
    let token_file = alice_config.join("token");
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let whoami = lk_at(&server.addr, None, &alice_config, &["whoami"], None, &[]);
    let whoami = stdout(&whoami);
    assert!(whoami.contains("groups:     admins, devs"), "{whoami}");
    assert!(
        whoami.contains("session:    browser sign-in through OIDC connector `corp`"),
        "{whoami}"
    );
    let read = lk_at(
        &server.addr,
        None,
        &alice_config,
        &["read", "lk://staging/db/password"],
        None,
        &[],
    );
    assert_eq!(stdout(&read), "from-vault", "{}", stderr(&read));
    // Admins administer: the provider's `admins` group reaches Cedar at once.
    let users = lk_at(
        &server.addr,
        None,
        &alice_config,
        &["user", "list"],
        None,
        &[],
    );
    assert!(users.status.success(), "{}", stderr(&users));

    // A user the provider sends without the groups claim is refused, not signed in bare.
    let output = browser_login(
        &server,
        &provider,
        &work.path().join("nogroups"),
        "corp",
        "nogroups",
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("login failed"),
        "{}",
        stderr(&output)
    );

    // Bob signs in with the device flow on the public client.
    let bob_config = work.path().join("bob");
    let (child, mut lines) = spawn_login(
        &server,
        &bob_config,
        &["--device", "--connector", "corp-cli"],
    );
    let prompt = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|line| line.contains("enter the code"))
        .unwrap();
    let user_code = prompt.rsplit(' ').next().unwrap().to_string();
    let jar = work.path().join("bob.cookies");
    let xsrf = |page: &str| {
        page.split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string()
    };
    let device = format!("{}/device", provider.issuer);
    let page = browse(&jar, &format!("{device}?user_code={user_code}"), &[], true);
    let page = browse(
        &jar,
        &device,
        &[("xsrf", &xsrf(&page)), ("user_code", &user_code)],
        true,
    );
    let start = browse(
        &jar,
        &device,
        &[
            ("xsrf", &xsrf(&page)),
            ("user_code", &user_code),
            ("confirm", "yes"),
        ],
        false,
    );
    let resume = browse(
        &jar,
        &start,
        &[("prompt", "login"), ("login", "bob"), ("password", "any")],
        false,
    );
    let consent = browse(&jar, &resume, &[], false);
    let done = browse(&jar, &consent, &[("prompt", "consent")], false);
    let success = browse(&jar, &done, &[], true);
    assert!(success.contains("Sign-in Success"), "{success}");
    let output = finish(child);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        output.status.success(),
        "{rest:?} {}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    assert!(
        stdout(&output).contains("signed in as User::\"bob\" (device sign-in through OIDC connector `corp-cli`; groups: devs)"),
        "{}",
        stdout(&output)
    );
    let bob_users = lk_at(
        &server.addr,
        None,
        &bob_config,
        &["user", "list"],
        None,
        &[],
    );
    assert_eq!(bob_users.status.code(), Some(4), "bob is no admin");

    // Both logins and the refused one are in the audit log.
    let events =
        stdout(&server.root(&["audit", "search", "--action", "login", "--format", "json"]));
    assert!(
        events.contains("User::\\\"alice\\\"") && events.contains("User::\\\"bob\\\""),
        "{events}"
    );
    assert!(events.contains("claim_rejected"), "{events}");

    // Logging out revokes the token on the server.
    let output = lk_at(&server.addr, None, &alice_config, &["logout"], None, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let read = lk_at(&server.addr, None, &alice_config, &["whoami"], None, &[]);
    assert_eq!(read.status.code(), Some(3));
}

#[test]
fn jwt_login_read_and_run() {
    let provider = Provider::start();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    // Keys come from the issuer's discovery document.
    server.root(&[
        "auth",
        "jwt",
        "set",
        "ci",
        "--issuer",
        &provider.issuer,
        "--audience",
        "urn:latchkey",
        "--bound-claim",
        "client_id=latchkey-*",
        "--user-claim",
        "client_id",
        "--group",
        "ci",
        "--ttl",
        "10m",
    ]);
    server.root(&["vault", "create", "staging", "--tag", "env=staging"]);
    server.root(&["secret", "put", "lk://staging/db", "password=ci-pass"]);
    let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policies/ci-reads-staging.cedar");
    server.root(&["policy", "set", "ci", "--file", policy.to_str().unwrap()]);

    let jwt = provider.workload_jwt();
    let jwt_file = work.path().join("jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let config = work.path().join("ci");
    let jwt_path = jwt_file.to_str().unwrap();
    let output = lk_at(
        &server.addr,
        None,
        &config,
        &["login", "--jwt-file", jwt_path, "--role", "ci"],
        None,
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(
            "signed in as Workload::\"latchkey-ci\" (JWT login with role `ci`; groups: ci)"
        ),
        "{}",
        stdout(&output)
    );

    // One line in a CI step: read and run exchange the JWT themselves.
    let fresh = work.path().join("fresh");
    let read = lk_at(
        &server.addr,
        None,
        &fresh,
        &[
            "read",
            "--jwt-file",
            jwt_path,
            "--role",
            "ci",
            "lk://staging/db/password",
        ],
        None,
        &[],
    );
    assert_eq!(stdout(&read), "ci-pass", "{}", stderr(&read));
    let run = lk_at(
        &server.addr,
        None,
        &fresh,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "test \"$DB\" = ci-pass && echo matched",
        ],
        None,
        &[
            ("LATCHKEY_ROLE", "ci"),
            ("LATCHKEY_JWT", &jwt),
            ("DB", "lk://staging/db/password"),
        ],
    );
    assert_eq!(stdout(&run).trim(), "matched", "{}", stderr(&run));
    assert!(!fresh.join("token").exists(), "read and run keep no token");

    // A forged token (the real one with its payload changed) is refused with exit code 3.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    parts[1] = parts[1].chars().rev().collect();
    let forged = parts.join(".");
    let output = lk_at(
        &server.addr,
        None,
        &fresh,
        &["login", "--role", "ci"],
        None,
        &[("LATCHKEY_JWT", &forged)],
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("login failed; an administrator can find the reason"),
        "{}",
        stderr(&output)
    );
    // The request id in the message finds the reason in the audit log.
    let request_id = stderr(&output)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let reason = stdout(&server.root(&[
        "audit",
        "search",
        "--request-id",
        &request_id,
        "--format",
        "json",
    ]));
    assert!(
        reason.contains("malformed_jwt") || reason.contains("bad_signature"),
        "{reason}"
    );
    // A role next to LATCHKEY_TOKEN is refused rather than one of them winning silently.
    let output = lk_at(
        &server.addr,
        server.root.as_deref(),
        &fresh,
        &[
            "read",
            "--role",
            "ci",
            "--jwt-file",
            jwt_path,
            "lk://staging/db/password",
        ],
        None,
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("both LATCHKEY_TOKEN and the JWT role"),
        "{}",
        stderr(&output)
    );
    let output = lk_at(
        &server.addr,
        None,
        &fresh,
        &["login", "--role", "deploy", "--jwt-file", jwt_path],
        None,
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(3),
        "an unknown role reads the same"
    );
    let output = lk_at(
        &server.addr,
        None,
        &fresh,
        &["login", "--role", "ci"],
        None,
        &[],
    );
    assert_eq!(
        output.status.code(),
        Some(2),
        "a role without a JWT is a usage error"
    );

    let events =
        stdout(&server.root(&["audit", "search", "--action", "login", "--format", "json"]));
    assert!(events.contains("Workload::\\\"latchkey-ci\\\""), "{events}");
    let failed: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("\"failed\""))
        .collect();
    assert!(
        failed.iter().any(|l| l.contains("unknown_role")),
        "{events}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains("malformed_jwt") || l.contains("bad_signature")),
        "{events}"
    );
    assert!(
        !events.contains(&jwt),
        "the JWT never reaches the audit log"
    );

    // File formats belong to the commands that write files.
    let output = server.lk(
        server.root.as_deref(),
        &["auth", "list", "--format", "md"],
        None,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("`--format md` is for"),
        "{}",
        stderr(&output)
    );
}

/// Starts `lk server --config` on a free port with plain HTTP on 127.0.0.1, then
/// initializes it with two shares and unseals it. Returns the server, its address and the
/// root token.
fn start_configured(work: &Path, audit_section: &str) -> (Child, String, String) {
    let config = work.join("latchkey.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\ndisable = true\n{audit_section}",
            work.join("data").display()
        ),
    )
    .unwrap();

    let log = work.join("server.log");
    let child = Command::new(LK)
        .args(["server", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("listening")) {
            let port = line
                .split("127.0.0.1:")
                .nth(1)
                .unwrap()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap();
            break format!("http://127.0.0.1:{port}");
        }
        assert!(Instant::now() < deadline, "no listening line: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let init = lk_at(
        &addr,
        None,
        work,
        &[
            "operator",
            "init",
            "--shares",
            "2",
            "--threshold",
            "2",
            "--format",
            "json",
        ],
        None,
        &[],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    for share in init["shares"].as_array().unwrap() {
        let output = lk_at(
            &addr,
            None,
            work,
            &["operator", "unseal", "--stdin"],
            Some(share.as_str().unwrap().as_bytes()),
            &[],
        );
        assert!(output.status.success(), "{}", stderr(&output));
    }
    (
        child,
        addr,
        init["root_token"].as_str().unwrap().to_string(),
    )
}

#[test]
fn export_purge_and_verify_after_retention() {
    let work = tempfile::tempdir().unwrap();
    let sink_file = work.path().join("stream.jsonl");
    let audit = format!(
        "[audit]\ncheckpoint_every = 5\ncheckpoint_interval = \"1h\"\nretention = \"1s\"\n\
         [[audit.sinks]]\nname = \"local\"\ntype = \"file\"\npath = \"{}\"\n",
        sink_file.display()
    );
    let (mut child, addr, root) = start_configured(work.path(), &audit);
    let lk = |args: &[&str]| lk_at(&addr, Some(&root), work.path(), args, None, &[]);
    let ok = |args: &[&str]| {
        let output = lk(args);
        assert!(output.status.success(), "lk {args:?}: {}", stderr(&output));
        output
    };
    for i in 0..12 {
        ok(&["vault", "create", &format!("v{i}")]);
    }
    let key = work.path().join("key.json");
    ok(&["audit", "key", "-o", key.to_str().unwrap()]);
    let before = work.path().join("before.jsonl");
    let exported = ok(&["audit", "export", "-o", before.to_str().unwrap()]);
    assert!(
        stderr(&exported).contains("recorded export 1 of events 1.."),
        "{}",
        stderr(&exported)
    );

    // Let the exported events age past the one-second retention.
    std::thread::sleep(Duration::from_millis(1200));
    let plan = ok(&["audit", "purge"]);
    assert!(stdout(&plan).contains("would purge"), "{}", stdout(&plan));
    let purged = ok(&["audit", "purge", "--yes"]);
    assert!(stdout(&purged).contains("purged"), "{}", stdout(&purged));
    let shown = ok(&["--format", "json", "audit", "purge"]);
    let after_plan: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let first_kept = after_plan["first_seq"].as_u64().unwrap();
    assert!(first_kept > 1, "{after_plan}");

    let live = ok(&["audit", "verify"]);
    assert!(
        stdout(&live).contains("audit chain intact"),
        "{}",
        stdout(&live)
    );
    let after = work.path().join("after.jsonl");
    ok(&["audit", "export", "-o", after.to_str().unwrap()]);
    let first_line = std::fs::read_to_string(&after).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(first_line.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"].as_u64().unwrap(), first_kept);
    for file in [&before, &after] {
        let output = ok(&[
            "audit",
            "verify",
            "--file",
            file.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ]);
        assert!(
            stdout(&output).contains("signed checkpoints verified"),
            "{}",
            stdout(&output)
        );
    }

    let status = lk(&["status"]);
    assert!(
        stdout(&status).contains("audit sink:   local (file) ok"),
        "{}",
        stdout(&status)
    );
    let streamed = std::fs::read_to_string(&sink_file).unwrap();
    assert!(
        streamed.lines().count() as u64 >= first_kept,
        "the sink delivered the purged events first"
    );

    let report = work.path().join("review.html");
    ok(&[
        "report",
        "access",
        "--since",
        "1h",
        "--format",
        "html",
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read_to_string(&report)
            .unwrap()
            .contains("<h2>Sign-off</h2>")
    );
    let bad = lk(&["report", "access", "--since", "bogus"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("invalid time `bogus`"),
        "{}",
        stderr(&bad)
    );

    let _ = nix_kill(child.id(), "TERM");
    let _ = child.wait();
}

/// Sends a SCIM request with curl and returns the status and the JSON body.
fn scim(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", method])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/scim+json", "--data", body])
        .arg(format!("{}/scim/v2{path}", server.addr))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (json, status) = text.rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(json).unwrap_or_default(),
    )
}

#[test]
fn oidc_sign_in_links_scim_user() {
    let provider = Provider::start();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    let port = provider.redirect_port.to_string();
    server.root(&[
        "auth",
        "oidc",
        "set",
        "corp",
        "--issuer",
        &provider.issuer,
        "--client-id",
        "latchkey-cli",
        "--scope",
        "groups",
        "--scope",
        "email",
        "--groups-claim",
        "groups",
        "--redirect-port",
        &port,
        "--require-scim-user",
    ]);
    let scim_token = stdout(&server.root(&["scim", "token", "create"]))
        .trim()
        .to_string();

    // The provider provisions Alice under her corporate name; her OIDC `sub` is `alice`.
    let (status, user) = scim(
        &server,
        &scim_token,
        "POST",
        "/Users",
        r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"alice.smith@example.test","externalId":"alice","active":true}"#,
    );
    assert_eq!(status, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_string();
    let (status, group) = scim(
        &server,
        &scim_token,
        "POST",
        "/Groups",
        &format!(
            r#"{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],"displayName":"ops","members":[{{"value":"{id}"}}]}}"#
        ),
    );
    assert_eq!(status, 201, "{group}");

    let output = browser_login(
        &server,
        &provider,
        &work.path().join("alice"),
        "corp",
        "alice",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // Linked by externalId; the groups come from SCIM, not from the login's claim.
    assert!(
        stdout(&output).contains("signed in as User::\"alice.smith@example.test\" (browser sign-in through OIDC connector `corp`; groups: ops)"),
        "{}",
        stdout(&output)
    );

    // Bob is not provisioned, and the connector requires it.
    let output = browser_login(&server, &provider, &work.path().join("bob"), "corp", "bob");
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));

    // Deactivated over SCIM: the token from the sign-in stops working, and so does signing in.
    let (status, _) = scim(
        &server,
        &scim_token,
        "PATCH",
        &format!("/Users/{id}"),
        r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Replace","value":{"active":"False"}}]}"#,
    );
    assert_eq!(status, 200);
    let whoami = lk_at(
        &server.addr,
        None,
        &work.path().join("alice"),
        &["whoami"],
        None,
        &[],
    );
    assert_eq!(whoami.status.code(), Some(3), "{}", stdout(&whoami));
    let output = browser_login(
        &server,
        &provider,
        &work.path().join("alice2"),
        "corp",
        "alice",
    );
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));
    let events =
        stdout(&server.root(&["audit", "search", "--action", "login", "--format", "json"]));
    assert!(events.contains("inactive_principal"), "{events}");
    assert!(events.contains("unknown_principal"), "{events}");
}

const ACCESS_POLICY: &str = r#"// Developers ask for prod and read it only under an approved grant.
permit(principal in Group::"devs", action == Action::"request", resource in Vault::"prod");
permit(principal in Group::"devs", action == Action::"read", resource in Vault::"prod")
  when { context.grant };
// Approvers review prod requests.
permit(principal in Group::"approvers", action == Action::"approve", resource in Vault::"prod");
"#;

#[test]
fn access_request_wait_approve_read_and_revoke() {
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_dev(&work.path().join("data"), true);
    server.root(&["vault", "create", "prod", "--tag", "env=prod"]);
    server.root(&["secret", "put", "lk://prod/db", "password=prod-Secret-0451"]);
    let policy = work.path().join("access.cedar");
    std::fs::write(&policy, ACCESS_POLICY).unwrap();
    server.root(&[
        "policy",
        "set",
        "access",
        "--file",
        policy.to_str().unwrap(),
    ]);
    server.root(&["user", "create", "dave", "--group", "devs"]);
    server.root(&["user", "create", "bob", "--group", "approvers"]);
    let token = |user: &str| {
        stdout(&server.root(&["token", "create", "--user", user, "--ttl", "1h"]))
            .trim()
            .to_string()
    };
    let dave = token("dave");
    let bob = token("bob");

    // Without a grant: exit 7 and the command that asks for one.
    let output = server.lk(Some(&dave), &["read", "lk://prod/db/password"], None);
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("lk request lk://prod/db --for 1h"),
        "{}",
        stderr(&output)
    );
    let run_env = [("DB_PASSWORD", "lk://prod/db/password")];
    let output = lk_at(
        &server.addr,
        Some(&dave),
        &work.path().join("config"),
        &["run", "--", "true"],
        None,
        &run_env,
    );
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));

    // Too long for the vault: a usage error naming the limit.
    let output = server.lk(
        Some(&dave),
        &["request", "lk://prod/db", "--for", "9h", "--reason", "x"],
        None,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("at most 8h"),
        "{}",
        stderr(&output)
    );

    // `lk run --wait` asks, waits, and runs once bob approves.
    let waiting = Command::new(LK)
        .args([
            "run",
            "--wait",
            "--for",
            "30m",
            "--reason",
            "INC-4211",
            "--",
            "sh",
            "-c",
            "test \"$DB_PASSWORD\" = prod-Secret-0451",
        ])
        .env("LATCHKEY_ADDR", &server.addr)
        .env("LATCHKEY_CONFIG_DIR", work.path().join("config"))
        .env("LATCHKEY_TOKEN", &dave)
        .env("DB_PASSWORD", "lk://prod/db/password")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let output = server.lk(
            Some(&bob),
            &["requests", "--pending", "--format", "json"],
            None,
        );
        assert!(output.status.success(), "{}", stderr(&output));
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if let Some(first) = list.as_array().and_then(|l| l.first()) {
            assert_eq!(first["reason"], "INC-4211");
            assert_eq!(first["resources"][0], "lk://prod/db");
            assert_eq!(first["can_review"], true);
            break first["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The requester cannot approve it; exit 4 and no approval counted.
    let output = server.lk(Some(&dave), &["approve", &id], None);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("your own"), "{}", stderr(&output));

    let output = server.lk(
        Some(&bob),
        &["approve", &id, "--comment", "checked the incident"],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("approved request"),
        "{}",
        stdout(&output)
    );
    let finished = waiting.wait_with_output().unwrap();
    assert!(
        finished.status.success(),
        "lk run --wait failed: {}",
        stderr(&finished)
    );
    assert!(
        stderr(&finished).contains("approved by User::\"bob\""),
        "{}",
        stderr(&finished)
    );

    let output = server.lk(Some(&dave), &["read", "lk://prod/db/password"], None);
    assert_eq!(stdout(&output).trim(), "prod-Secret-0451");
    let shown = stdout(&server.lk(Some(&dave), &["requests", &id], None));
    assert!(shown.contains("status:     approved"), "{shown}");
    assert!(
        shown.contains("User::\"bob\" approved at") && shown.contains("checked the incident"),
        "{shown}"
    );

    // The grant, listed and revoked by its holder: reads stop at once.
    let output = server.lk(Some(&dave), &["grants", "--live", "--format", "json"], None);
    let grants: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let grant = grants[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        grants[0]["approved_by"],
        serde_json::json!(["User::\"bob\""])
    );
    let output = server.lk(
        Some(&dave),
        &["grant", "revoke", &grant, "--reason", "done"],
        None,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = server.lk(Some(&dave), &["read", "lk://prod/db/password"], None);
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));

    // The audit trail of the request, in one query.
    let trail = stdout(&server.root(&["audit", "search", "--access-request", &id]));
    for needle in [
        "request",
        "approve",
        "grant",
        "read",
        "comment=checked the incident",
        "approval_reason=INC-4211",
    ] {
        assert!(trail.contains(needle), "{needle} missing from:\n{trail}");
    }

    // Vault settings, shown and changed.
    let output = server.root(&["vault", "access", "prod", "--approvals", "2"]);
    assert!(
        stdout(&output).contains("approvals:       2"),
        "{}",
        stdout(&output)
    );
    let output = server.lk(
        server.root.as_deref(),
        &["vault", "access", "prod", "--max-grant", "never"],
        None,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    server.stop();
}
