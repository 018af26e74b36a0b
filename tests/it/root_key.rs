//! Root key sources, `aitokens init`, start-up refusals, process hardening.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aitokens::{
    api::pb::{GetTokenRequest, ResolveTokenRequest},
    config::Config,
    server::Server,
};

use crate::{
    backend::TestStore,
    common::{Setup, TestServer, create_request},
};

fn aitokens() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aitokens"))
}

/// Points `config` at a passphrase file instead of the dev key file.
fn use_passphrase(config: &mut Config, dir: &Path, passphrase: &str) {
    let path = dir.join("passphrase");
    write_private(&path, &format!("{passphrase}\n"));
    config.store.master_key_file = None;
    config.store.passphrase_file = Some(path);
}

/// Writes a secret file as an operator must: mode 0600.
pub fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

#[tokio::test]
async fn a_passphrase_protects_the_database_and_a_wrong_one_is_named() {
    let mut setup = Setup::new();
    let dir = setup.dir.path().to_owned();
    use_passphrase(&mut setup.config, &dir, "correct horse battery staple");
    let server = setup.start().await;
    server
        .admin()
        .await
        .create_token(create_request("acme", "t", "sk-pass"))
        .await
        .expect("create");
    let server = server.restart().await;
    let value = server
        .resolver()
        .await
        .resolve_token(ResolveTokenRequest {
            name: "tenants/acme/tokens/t".into(),
        })
        .await
        .expect("resolve after restart with the passphrase")
        .into_inner()
        .value
        .clone();
    assert_eq!(value, "sk-pass");

    let (dir, mut config) = server.stop().await;
    use_passphrase(&mut config, dir.path(), "wrong horse");
    let err = Server::open(&config).await.err().expect("wrong passphrase");
    assert!(
        err.to_string().contains("master key does not match"),
        "{err}"
    );

    // A key file where the database expects a passphrase is named as such.
    config.store.passphrase_file = None;
    config.store.master_key_file = Some(dir.path().join("master.key"));
    let err = Server::open(&config)
        .await
        .err()
        .expect("key for a passphrase database");
    assert!(
        err.to_string().contains("protected by a passphrase"),
        "{err}"
    );
}

#[tokio::test]
async fn the_argon2id_parameters_are_at_least_rfc9106_option_two() {
    let mut setup = Setup::new();
    let dir = setup.dir.path().to_owned();
    use_passphrase(&mut setup.config, &dir, "p");
    let server = setup.start().await;
    let (dir, _config) = server.stop().await;
    let row = &dir
        .store
        .back_door()
        .await
        .query("SELECT kdf_salt, kdf_m_kib, kdf_t, kdf_p FROM keyring", &[])
        .await[0];
    let (salt, m, t, p) = (row[0].bytes(), row[1].int(), row[2].int(), row[3].int());
    assert!(
        salt.len() >= 16 && m >= 64 * 1024 && t >= 3 && p >= 4,
        "{m} {t} {p}"
    );
}

struct Serve {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `aitokens serve --config` and waits (bounded) for "serving" or an exit.
fn serve(config: &Path, env: &[(&str, &str)]) -> Result<Serve, String> {
    let mut child = aitokens()
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aitokens serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains("serving") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if rx.try_recv().is_ok() {
            return Ok(Serve { child, stderr });
        }
        if let Some(status) = child.try_wait().expect("wait") {
            let text = stderr.join().unwrap_or_default();
            return Err(format!("exited with {status}: {text}"));
        }
        assert!(
            Instant::now() < deadline,
            "aitokens serve did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Serve {
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stderr.join().unwrap_or_default()
    }
}

/// Writes the dev config, on ephemeral ports, to `path`.
fn write_config(setup: &Setup, path: &Path, edit: impl FnOnce(&mut toml::Table)) {
    // Port 0: the server picks free ports itself (no race with other tests).
    let mut config = setup.config.clone();
    config.admin.listen = "127.0.0.1:0".parse().expect("addr");
    config.internal.listen = "127.0.0.1:0".parse().expect("addr");
    config.metrics = None;
    let mut table: toml::Table =
        toml::from_str(&toml::to_string(&config).expect("ser")).expect("de");
    edit(&mut table);
    std::fs::write(path, toml::to_string(&table).expect("ser")).expect("write config");
}

#[test]
fn an_environment_key_is_used_then_removed_and_the_process_is_hardened() {
    let setup = Setup::new();
    let config_path = setup.dir.path().join("env.toml");
    write_config(&setup, &config_path, |t| {
        let store = t["store"].as_table_mut().expect("store");
        store.remove("master_key_file");
        store.insert("master_key_env".into(), "AITOKENS_TEST_ROOT_KEY".into());
    });
    let key_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    let serve = serve(&config_path, &[("AITOKENS_TEST_ROOT_KEY", &key_b64)])
        .expect("serve with an env key");
    let pid = serve.child.id();
    // (/proc/PID/environ keeps the environment the process was started with;
    // a non-dumpable process makes it readable by root only.)
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );
    let logs = serve.stop();
    assert!(logs.contains("process hardened"), "{logs}");
    assert!(
        logs.contains("master key read and removed from the environment"),
        "{logs}"
    );
    assert!(!logs.contains(&key_b64), "the key reached the logs");

    // Missing variable: a one-line error naming it.
    let out = aitokens()
        .args(["serve", "--config"])
        .arg(&config_path)
        .env_remove("AITOKENS_TEST_ROOT_KEY")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("AITOKENS_TEST_ROOT_KEY is not set"),
        "{err}"
    );
}

#[test]
fn init_binds_a_database_to_its_key_and_refusals_say_which_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestStore::named(dir.path(), "a.db");
    let key = dir.path().join("a.key");
    let out = aitokens()
        .args(["init", "--db", &db.spec()])
        .arg("--key-file")
        .arg(&key)
        .output()
        .expect("init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    let again = aitokens()
        .args(["init", "--db", &db.spec()])
        .arg("--key-file")
        .arg(&key)
        .output()
        .expect("init");
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already initialized")
    );

    // A second deployment; its key file on the first database is named as such.
    let other_db = TestStore::named(dir.path(), "b.db");
    let other_key = dir.path().join("b.key");
    let out = aitokens()
        .args(["init", "--db", &other_db.spec()])
        .arg("--key-file")
        .arg(&other_key)
        .output()
        .expect("init");
    assert!(out.status.success());
    let setup = Setup::new();
    let config_path = dir.path().join("c.toml");
    write_config(&setup, &config_path, |t| {
        let store = t["store"].as_table_mut().expect("store");
        db.configure_toml(store);
        store.insert(
            "master_key_file".into(),
            other_key.display().to_string().into(),
        );
    });
    let err = serve(&config_path, &[])
        .err()
        .expect("another deployment's key");
    assert!(err.contains("belongs to another deployment"), "{err}");
    // A missing key file is named.
    std::fs::remove_file(&other_key).expect("rm");
    let err = serve(&config_path, &[]).err().expect("missing key");
    assert!(
        err.contains("master key file") && err.contains("No such file"),
        "{err}"
    );

    // Passphrase init from stdin, then serve with the same passphrase from a file.
    let pdb = TestStore::named(dir.path(), "p.db");
    let mut child = aitokens()
        .args(["init", "--passphrase-stdin", "--db", &pdb.spec()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("init");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a long passphrase\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    let pass_file = dir.path().join("pass");
    write_private(&pass_file, "a long passphrase\n");
    write_config(&setup, &config_path, |t| {
        let store = t["store"].as_table_mut().expect("store");
        store.remove("master_key_file");
        pdb.configure_toml(store);
        store.insert(
            "passphrase_file".into(),
            pass_file.display().to_string().into(),
        );
    });
    serve(&config_path, &[])
        .expect("serve with the init passphrase")
        .stop();
}

#[tokio::test]
async fn a_key_file_open_to_others_is_refused_at_start() {
    let server = TestServer::start().await;
    server
        .admin()
        .await
        .get_token(GetTokenRequest {
            name: "tenants/a/tokens/b".into(),
        })
        .await
        .expect_err("absent");
    let (_dir, config) = server.stop().await;
    let key = config.store.master_key_file.clone().expect("key file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let err = Server::open(&config).await.err().expect("refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn a_passphrase_file_open_to_others_is_refused_at_start() {
    let mut setup = Setup::new();
    let dir = setup.dir.path().to_owned();
    use_passphrase(&mut setup.config, &dir, "a passphrase only its owner reads");
    let server = setup.start().await;
    let (_dir, config) = server.stop().await;
    let path = config
        .store
        .passphrase_file
        .clone()
        .expect("passphrase file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).expect("chmod");
    let err = Server::open(&config).await.err().expect("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "passphrase file {0} is readable or writable by group or others (mode 604); \
             run: chmod 600 {0}",
            path.display()
        )
    );
    // Control: the same file, private again, opens the database.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    Server::open(&config)
        .await
        .expect("private passphrase file");
}

fn serve_on_a_terminal(config: &Path, passphrase: &str) -> (bool, String) {
    let args = [
        std::ffi::OsStr::new("serve"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ];
    let typing = crate::common::Typing {
        prompt: "aitokens passphrase: ",
        typed: passphrase,
        until: "serving",
        stop_after: Some("server stopped"),
    };
    let out =
        crate::common::on_a_terminal(Path::new(env!("CARGO_BIN_EXE_aitokens")), &args, &typing)
            .env("RUST_LOG", "info")
            .output()
            .expect("python3 with pty");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        format!("{screen}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_passphrase_typed_at_a_terminal_prompt_is_not_echoed() {
    let setup = Setup::new();
    let config_path = setup.dir.path().join("prompt.toml");
    write_config(&setup, &config_path, |t| {
        let store = t["store"].as_table_mut().expect("store");
        store.remove("master_key_file");
        store.insert("passphrase".into(), "prompt".into());
    });
    let passphrase = "typed passphrase 7c1e";
    let (ok, screen) = serve_on_a_terminal(&config_path, passphrase);
    assert!(ok && screen.contains("serving"), "{screen}");
    assert!(
        !screen.contains(passphrase),
        "the passphrase was echoed: {screen}"
    );
    let (ok, screen) = serve_on_a_terminal(&config_path, "wrong passphrase");
    assert!(
        !ok && screen.contains("master key does not match"),
        "{screen}"
    );
}
