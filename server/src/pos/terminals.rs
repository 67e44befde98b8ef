//! The POS terminals the server accepts, live: what the handshake checks, and what the admin
//! API changes (create, disable, rotate a secret).
//!
//! The credentials file is the store of record. A change is made to a copy of the file's
//! terminals, validated whole, written atomically (0600; `private_file::write`), and only then
//! applied in memory; a change that cannot be written changes nothing. Changes are serialised
//! by one lock, which the handshake never takes: it reads the map of enabled terminals under a
//! read lock held for a lookup.
//!
//! Each enabled terminal has a revocation channel that its authenticated sessions watch. When
//! the terminal is disabled or its secret rotated, the channel fires: each session stops
//! reading, answers the requests it has in flight, sends `auth_failed` and closes (see
//! docs/protocol.md, "Credentials file"). A session authenticated with a secret never outlives
//! it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use ledger_protocol::credentials::CredentialsError;
use ledger_protocol::credentials::{SECRET_BYTES_MIN, TERMINALS_MAX};
use ledger_protocol::{Credentials, Terminal};
use tokio::sync::watch;

use super::rate::Bucket;

/// Bytes of a secret the server generates: 256 bits.
pub const GENERATED_SECRET_BYTES: usize = 32;

/// What a handshake needs of an enabled terminal.
pub struct Admitted {
    /// The HMAC key.
    pub secret: Vec<u8>,
    /// The terminal's rate limit, shared by its sessions (and kept across rotations).
    pub bucket: Arc<Mutex<Bucket>>,
    /// Fires when the terminal is disabled or its secret is rotated.
    revoked: watch::Sender<bool>,
}

impl Admitted {
    /// A receiver that a session watches for the end of this secret.
    pub fn revocation(&self) -> watch::Receiver<bool> {
        self.revoked.subscribe()
    }

    /// Ends the sessions of this secret; returns how many there were.
    fn revoke(&self) -> usize {
        let sessions = self.revoked.receiver_count();
        self.revoked.send_replace(true);
        sessions
    }
}

/// A terminal as the admin API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TerminalView {
    /// Its id.
    pub id: u32,
    /// Its own rate limit (operations per second), if it has one.
    pub rate_per_second: Option<u32>,
    /// The rate it is held to: its own, or the server's default.
    pub effective_rate_per_second: u32,
    /// Disabled: refused at the handshake; its id stays taken.
    pub disabled: bool,
    /// Authenticated sessions open now.
    pub sessions: usize,
}

/// A terminal created or given a new secret: the only time the secret is shown.
#[derive(Debug)]
pub struct Issued {
    /// The terminal.
    pub id: u32,
    /// Its new secret.
    pub secret: Vec<u8>,
    /// Sessions of the old secret that were closed (0 for a new terminal).
    pub sessions_closed: usize,
}

/// Why a change was refused; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// No terminal has this id.
    #[error("terminal {0} does not exist")]
    NotFound(u32),
    /// The id is taken (by an enabled or a disabled terminal).
    #[error("terminal {0} exists (ids of disabled terminals stay taken)")]
    Exists(u32),
    /// The terminal is already disabled.
    #[error("terminal {0} is already disabled")]
    AlreadyDisabled(u32),
    /// The request is invalid (id 0, rate 0, too many terminals).
    #[error("{0}")]
    Invalid(String),
    /// The credentials file could not be written.
    #[error("cannot write the credentials file {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// The live terminals.
pub struct Terminals {
    path: PathBuf,
    default_rate: u32,
    /// The file's content; its lock serialises changes.
    file: Mutex<Credentials>,
    /// Enabled terminals by id.
    enabled: RwLock<HashMap<u32, Arc<Admitted>>>,
}

impl Terminals {
    /// The terminals of `credentials`, read from (and written back to) `path`; a terminal
    /// without its own rate gets `default_rate`.
    pub fn new(credentials: Credentials, path: PathBuf, default_rate: u32) -> Terminals {
        let now = Instant::now();
        let enabled = credentials
            .enabled()
            .map(|terminal| (terminal.id, admitted(terminal, default_rate, None, now)))
            .collect();
        Terminals {
            path,
            default_rate,
            file: Mutex::new(credentials),
            enabled: RwLock::new(enabled),
        }
    }

    /// The credentials file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The enabled terminal `id`, for a handshake.
    pub fn admitted(&self, id: u32) -> Option<Arc<Admitted>> {
        self.enabled.read().expect("terminals lock").get(&id).cloned()
    }

    /// Enabled terminals.
    pub fn enabled_count(&self) -> usize {
        self.enabled.read().expect("terminals lock").len()
    }

    /// Every terminal of the file, in file order.
    pub fn list(&self) -> Vec<TerminalView> {
        let file = self.file.lock().expect("credentials lock");
        let enabled = self.enabled.read().expect("terminals lock");
        file.terminals()
            .iter()
            .map(|terminal| TerminalView {
                id: terminal.id,
                rate_per_second: terminal.rate_per_second,
                effective_rate_per_second: terminal.rate_per_second.unwrap_or(self.default_rate),
                disabled: terminal.disabled,
                sessions: enabled
                    .get(&terminal.id)
                    .map_or(0, |admitted| admitted.revoked.receiver_count()),
            })
            .collect()
    }

    /// Adds a terminal with a fresh secret: `id`, or one above the largest id in the file.
    /// Blocking (it writes and fsyncs the file).
    pub fn create(
        &self,
        id: Option<u32>,
        rate_per_second: Option<u32>,
    ) -> Result<Issued, TerminalError> {
        let mut file = self.file.lock().expect("credentials lock");
        let id = match id {
            Some(0) => return Err(TerminalError::Invalid("terminal id 0 is reserved".into())),
            Some(id) if file.terminal(id).is_some() => return Err(TerminalError::Exists(id)),
            Some(id) => id,
            None => {
                let largest = file.terminals().iter().map(|t| t.id).max().unwrap_or(0);
                largest.checked_add(1).ok_or_else(|| {
                    TerminalError::Invalid("no id above the largest is left: name one".into())
                })?
            }
        };
        if file.terminals().len() >= TERMINALS_MAX {
            return Err(TerminalError::Invalid(format!(
                "the credentials file holds {TERMINALS_MAX} terminals, the most it may"
            )));
        }
        let secret = generate_secret()?;
        let terminal = Terminal { id, secret: secret.clone(), rate_per_second, disabled: false };
        let mut terminals = file.terminals().to_vec();
        terminals.push(terminal.clone());
        self.store(&mut file, terminals)?;
        let admitted = admitted(&terminal, self.default_rate, None, Instant::now());
        self.enabled.write().expect("terminals lock").insert(id, admitted);
        tracing::info!(terminal = id, "terminal created");
        Ok(Issued { id, secret, sessions_closed: 0 })
    }

    /// Disables a terminal and closes its sessions. Blocking.
    pub fn disable(&self, id: u32) -> Result<usize, TerminalError> {
        let mut file = self.file.lock().expect("credentials lock");
        let mut terminals = file.terminals().to_vec();
        let terminal =
            terminals.iter_mut().find(|t| t.id == id).ok_or(TerminalError::NotFound(id))?;
        if terminal.disabled {
            return Err(TerminalError::AlreadyDisabled(id));
        }
        terminal.disabled = true;
        self.store(&mut file, terminals)?;
        let removed = self.enabled.write().expect("terminals lock").remove(&id);
        let closed = removed.map_or(0, |admitted| admitted.revoke());
        tracing::info!(terminal = id, sessions_closed = closed, "terminal disabled");
        Ok(closed)
    }

    /// Gives a terminal a fresh secret (enabling it if it was disabled) and closes the
    /// sessions of the old one. Blocking.
    pub fn rotate(&self, id: u32) -> Result<Issued, TerminalError> {
        let mut file = self.file.lock().expect("credentials lock");
        let mut terminals = file.terminals().to_vec();
        let terminal =
            terminals.iter_mut().find(|t| t.id == id).ok_or(TerminalError::NotFound(id))?;
        let secret = generate_secret()?;
        terminal.secret = secret.clone();
        terminal.disabled = false;
        let terminal = terminal.clone();
        self.store(&mut file, terminals)?;
        let mut enabled = self.enabled.write().expect("terminals lock");
        let old = enabled.get(&id).cloned();
        let bucket = old.as_ref().map(|admitted| Arc::clone(&admitted.bucket));
        enabled.insert(id, admitted(&terminal, self.default_rate, bucket, Instant::now()));
        drop(enabled);
        let closed = old.map_or(0, |admitted| admitted.revoke());
        tracing::info!(terminal = id, sessions_closed = closed, "terminal secret rotated");
        Ok(Issued { id, secret, sessions_closed: closed })
    }

    /// Validates `terminals`, writes them to the file, and makes them the file's content.
    fn store(&self, file: &mut Credentials, terminals: Vec<Terminal>) -> Result<(), TerminalError> {
        let credentials = Credentials::new(terminals).map_err(|error| match error {
            CredentialsError::Terminal { id, message } => {
                TerminalError::Invalid(format!("terminal {id}: {message}"))
            }
            other => TerminalError::Invalid(other.to_string()),
        })?;
        crate::private_file::write(&self.path, credentials.to_toml().as_bytes()).map_err(
            |error| TerminalError::Write {
                path: self.path.display().to_string(),
                message: format!("{error:#}"),
            },
        )?;
        *file = credentials;
        Ok(())
    }
}

fn admitted(
    terminal: &Terminal,
    default_rate: u32,
    bucket: Option<Arc<Mutex<Bucket>>>,
    now: Instant,
) -> Arc<Admitted> {
    let rate = terminal.rate_per_second.unwrap_or(default_rate);
    Arc::new(Admitted {
        secret: terminal.secret.clone(),
        bucket: bucket.unwrap_or_else(|| Arc::new(Mutex::new(Bucket::new(rate, now)))),
        revoked: watch::Sender::new(false),
    })
}

fn generate_secret() -> Result<Vec<u8>, TerminalError> {
    const _: () = assert!(GENERATED_SECRET_BYTES >= SECRET_BYTES_MIN);
    let mut secret = vec![0u8; GENERATED_SECRET_BYTES];
    getrandom::fill(&mut secret)
        .map_err(|error| TerminalError::Invalid(format!("no randomness for a secret: {error}")))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminals(dir: &Path) -> Terminals {
        let credentials = Credentials::new(vec![Terminal {
            id: 1,
            secret: vec![1; 32],
            rate_per_second: None,
            disabled: false,
        }])
        .unwrap();
        Terminals::new(credentials, dir.join("credentials.toml"), 100)
    }

    #[test]
    fn changes_reach_the_file_before_the_handshake_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let live = terminals(dir.path());
        let created = live.create(None, Some(7)).unwrap();
        assert_eq!(created.id, 2);
        let file = Credentials::load(live.path()).unwrap();
        assert_eq!(file.terminal(2).unwrap().secret, created.secret);
        assert_eq!(live.admitted(2).unwrap().secret, created.secret);
        assert_eq!(live.admitted(2).unwrap().bucket.lock().unwrap().rate(), 7);

        // A session of terminal 2 sees the rotation; the new secret replaces the old.
        let session = live.admitted(2).unwrap().revocation();
        let rotated = live.rotate(2).unwrap();
        assert_ne!(rotated.secret, created.secret);
        assert_eq!(rotated.sessions_closed, 1);
        assert!(*session.borrow(), "the old secret's session is told to close");
        assert_eq!(
            Credentials::load(live.path()).unwrap().terminal(2).unwrap().secret,
            rotated.secret
        );

        assert_eq!(live.disable(2).unwrap(), 0);
        assert!(live.admitted(2).is_none());
        assert!(Credentials::load(live.path()).unwrap().terminal(2).unwrap().disabled);
        assert!(matches!(live.disable(2), Err(TerminalError::AlreadyDisabled(2))));
        // Its id stays taken; a rotation enables it again with a secret nobody has seen.
        assert!(matches!(live.create(Some(2), None), Err(TerminalError::Exists(2))));
        let again = live.rotate(2).unwrap();
        assert_eq!(live.admitted(2).unwrap().secret, again.secret);
        assert!(matches!(live.rotate(9), Err(TerminalError::NotFound(9))));
        assert!(matches!(live.create(Some(0), None), Err(TerminalError::Invalid(_))));
        assert!(matches!(live.create(None, Some(0)), Err(TerminalError::Invalid(_))));
        assert_eq!(live.list().len(), 2, "refused changes add nothing");
    }

    #[test]
    fn a_change_that_cannot_be_written_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = terminals(&dir.path().join("missing"));
        assert!(matches!(live.create(None, None), Err(TerminalError::Write { .. })));
        assert!(live.admitted(2).is_none());
        assert!(matches!(live.disable(1), Err(TerminalError::Write { .. })));
        assert!(live.admitted(1).is_some(), "still enabled");
        assert_eq!(live.list().len(), 1);
    }
}
