//! Profiles: connection settings for the client commands, in a TOML file.
//!
//! ```toml
//! admin_addr = "127.0.0.1:50051"     # host:port of the admin listener
//! internal_addr = "127.0.0.1:50052"  # host:port of the internal listener
//! ca = "ca.pem"                      # CA that signed the server certificate
//! # server_name = "aitokens.example.com"  # name to verify, if not the host
//!
//! [admin]                            # identity for create/get/list/rename/remove
//! cert = "admin.pem"
//! key = "admin.key"
//!
//! [resolver]                         # identity for resolve
//! cert = "agent.pem"
//! key = "agent.key"
//! ```
//!
//! Relative paths are relative to the profile's directory. A profile names
//! files only; it never holds a key or a token value.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File name of the profile `aitokens dev` writes into its data folder; the
/// client commands use `./aitokens-dev/profile.toml` when it exists and no
/// other profile is named.
pub const DEV_PROFILE: &str = "profile.toml";

/// Connection settings for the client commands. Every field is optional:
/// flags and environment variables fill in or override what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `host:port` of the admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,
    /// `host:port` of the internal listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_addr: Option<String>,
    /// CA certificate (PEM) that the server certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The DNS name to verify in the server certificate, when it differs
    /// from the host in the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client certificate for the admin commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<ClientIdentity>,
    /// Client certificate for `resolve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<ClientIdentity>,
}

/// A client certificate and its private key, as PEM file paths.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdentity {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl Profile {
    /// The profile for an `aitokens dev` data folder listening on these addresses.
    pub fn for_dev(admin: SocketAddr, internal: SocketAddr) -> Self {
        let identity = |name: &str| ClientIdentity {
            cert: format!("{name}.pem").into(),
            key: format!("{name}.key").into(),
        };
        Self {
            admin_addr: Some(admin.to_string()),
            internal_addr: Some(internal.to_string()),
            ca: Some("ca.pem".into()),
            server_name: None,
            admin: Some(identity("admin")),
            resolver: Some(identity("agent")),
        }
    }

    /// Reads a profile and resolves its relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)
            .map_err(|e| Error::config(format!("reading profile {}: {e}", path.display())))?;
        let mut profile: Self = toml::from_str(&text)
            .map_err(|e| Error::config(format!("profile {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let identities = [profile.admin.as_mut(), profile.resolver.as_mut()];
        let mut paths: Vec<&mut PathBuf> = identities
            .into_iter()
            .flatten()
            .flat_map(|id| [&mut id.cert, &mut id.key])
            .collect();
        paths.extend(profile.ca.as_mut());
        for path in paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(profile)
    }

    /// Refuses a profile picked up implicitly (from the current directory,
    /// not named by the user) unless the user owns it and its directory and
    /// neither is writable by group or others: whoever could write it would
    /// choose the server, the CA and the certificate the CLI uses, and so
    /// receive the values typed into `token create`.
    pub fn check_implicit(path: &Path) -> Result<()> {
        let me = rustix::process::getuid().as_raw();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        for (what, place) in [("profile", path), ("profile directory", dir)] {
            let shown = place.display();
            let meta =
                fs::metadata(place).map_err(|e| Error::config(format!("{what} {shown}: {e}")))?;
            let refuse = |why: String| {
                Error::config(format!(
                    "{what} {shown} was picked up from the current directory, but {why}; \
                     refused. Name a profile with --profile to use another one"
                ))
            };
            if meta.uid() != me {
                return Err(refuse(format!(
                    "it is owned by uid {}, not by you (uid {me})",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(refuse(format!(
                    "group or others may write it (mode {:o}; run chmod go-w {shown})",
                    meta.mode() & 0o777
                )));
            }
        }
        Ok(())
    }

    /// Writes the profile atomically (temp file, then rename), mode 0600.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Internal(format!("profile: {e}")))?;
        let header = "# Written by `aitokens dev` on every start: connection settings for\n\
                      # `aitokens token ...`. Paths are relative to this file.\n";
        let tmp = path.with_extension("toml.tmp");
        let _ = fs::remove_file(&tmp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(header.as_bytes())?;
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, path));
        written.map_err(|e| Error::config(format!("writing profile {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_profile_round_trips_with_paths_relative_to_its_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DEV_PROFILE);
        let admin = "127.0.0.1:4001".parse().expect("addr");
        let internal = "127.0.0.1:4002".parse().expect("addr");
        Profile::for_dev(admin, internal)
            .write(&path)
            .expect("write");
        let loaded = Profile::load(&path).expect("load");
        assert_eq!(loaded.admin_addr.as_deref(), Some("127.0.0.1:4001"));
        assert_eq!(loaded.internal_addr.as_deref(), Some("127.0.0.1:4002"));
        assert_eq!(loaded.ca, Some(dir.path().join("ca.pem")));
        let resolver = loaded.resolver.expect("resolver identity");
        assert_eq!(resolver.cert, dir.path().join("agent.pem"));
        assert_eq!(resolver.key, dir.path().join("agent.key"));
    }

    #[test]
    fn an_implicit_profile_must_be_yours_and_writable_by_you_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("aitokens-dev");
        fs::create_dir(&folder).expect("mkdir");
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = folder.join(DEV_PROFILE);
        let addr = "127.0.0.1:1".parse().expect("addr");
        Profile::for_dev(addr, addr).write(&path).expect("write");
        Profile::check_implicit(&path).expect("own, 0600, in a 0755 folder");

        let chmod = |path: &Path, mode| {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod")
        };
        chmod(&path, 0o666);
        let err = Profile::check_implicit(&path).expect_err("world-writable");
        assert_eq!(
            err.to_string(),
            format!(
                "profile {0} was picked up from the current directory, but group or others \
                 may write it (mode 666; run chmod go-w {0}); refused. Name a profile with \
                 --profile to use another one",
                path.display()
            )
        );
        chmod(&path, 0o644);
        chmod(&folder, 0o775);
        let err = Profile::check_implicit(&path).expect_err("group-writable folder");
        assert!(
            err.to_string().starts_with(&format!(
                "profile directory {} was picked up",
                folder.display()
            )),
            "{err}"
        );
        chmod(&folder, 0o700);

        // Someone else's file: as root, give one away; otherwise use one
        // root owns.
        let me = rustix::process::getuid();
        let theirs = if me.is_root() {
            rustix::fs::chown(&path, Some(rustix::fs::Uid::from_raw(65534)), None).expect("chown");
            path.clone()
        } else {
            PathBuf::from("/etc/passwd")
        };
        let err = Profile::check_implicit(&theirs).expect_err("not mine");
        assert!(
            err.to_string().contains(&format!(
                "but it is owned by uid {}, not by you (uid {})",
                fs::metadata(&theirs).expect("meta").uid(),
                me.as_raw()
            )),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        fs::write(&path, "admin_adr = \"x:1\"\n").expect("write");
        let err = Profile::load(&path).expect_err("typo refused");
        assert!(err.to_string().contains("admin_adr"), "{err}");
    }
}
