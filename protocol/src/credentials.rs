//! The credentials file: POS terminals and their secrets, shared by `ledgerd` (which checks
//! them) and its clients (which sign with them). Spec: docs/protocol.md, "Credentials file".
//!
//! ```toml
//! [[terminal]]
//! id = 1
//! secret = "5f0c…"          # hex, 16..=64 bytes
//! rate_per_second = 100000  # optional: overrides the server's default for this terminal
//! disabled = true           # optional: refused by the server (the id stays taken)
//! ```
//!
//! The file is bounded (1 MiB, 65,536 terminals) and validated as a whole: a duplicate id, a
//! short secret or a bad hex digit is an error naming the terminal, and nothing is loaded.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Largest credentials file read.
pub const CREDENTIALS_BYTES_MAX: u64 = 1024 * 1024;
/// Most terminals in one file.
pub const TERMINALS_MAX: usize = 65_536;
/// Shortest secret accepted: 128 bits.
pub const SECRET_BYTES_MIN: usize = 16;
/// Longest secret accepted.
pub const SECRET_BYTES_MAX: usize = 64;

/// One terminal.
#[derive(Clone, PartialEq, Eq)]
pub struct Terminal {
    /// Its id (never 0).
    pub id: u32,
    /// Its secret.
    pub secret: Vec<u8>,
    /// Its own rate limit, if it has one.
    pub rate_per_second: Option<u32>,
    /// Disabled by an operator: the server refuses it, clients skip it. Its entry stays so
    /// that its id is never given to another terminal.
    pub disabled: bool,
}

impl std::fmt::Debug for Terminal {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("rate_per_second", &self.rate_per_second)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// The terminals of a credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    terminals: Vec<Terminal>,
}

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is larger than `CREDENTIALS_BYTES_MAX`.
    #[error("{0}: larger than 1 MiB")]
    TooLarge(String),
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A terminal entry is invalid.
    #[error("terminal {id}: {message}")]
    Terminal {
        /// The terminal's id.
        id: u32,
        /// What is wrong.
        message: String,
    },
    /// No terminal, or more than `TERMINALS_MAX`.
    #[error("the file must list 1..={TERMINALS_MAX} terminals, it lists {0}")]
    Count(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTerminal {
    id: u32,
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    terminal: Vec<FileTerminal>,
}

impl Credentials {
    /// Credentials holding these terminals, checked as a loaded file is.
    pub fn new(terminals: Vec<Terminal>) -> Result<Credentials, CredentialsError> {
        if terminals.is_empty() || terminals.len() > TERMINALS_MAX {
            return Err(CredentialsError::Count(terminals.len()));
        }
        let mut ids: Vec<u32> = terminals.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|pair| pair.first() == pair.get(1)) {
            let id = pair.first().copied().unwrap_or_default();
            return Err(CredentialsError::Terminal { id, message: "listed twice".into() });
        }
        for terminal in &terminals {
            let invalid = |message: &str| CredentialsError::Terminal {
                id: terminal.id,
                message: message.to_string(),
            };
            if terminal.id == 0 {
                return Err(invalid("id 0 is reserved"));
            }
            if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&terminal.secret.len()) {
                return Err(invalid("the secret must be 16..=64 bytes (32..=128 hex digits)"));
            }
            if terminal.rate_per_second == Some(0) {
                return Err(invalid("rate_per_second must be at least 1"));
            }
        }
        Ok(Credentials { terminals })
    }

    /// Reads and checks a credentials file.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let name = path.display().to_string();
        let io = |source| CredentialsError::Io { path: name.clone(), source };
        let metadata = std::fs::metadata(path).map_err(io)?;
        if metadata.len() > CREDENTIALS_BYTES_MAX {
            return Err(CredentialsError::TooLarge(name));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Credentials::parse(&text).map_err(|error| match error {
            CredentialsError::Syntax { message, .. } => {
                CredentialsError::Syntax { path: name, message }
            }
            other => other,
        })
    }

    /// Parses the text of a credentials file.
    pub fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        let file: File = toml::from_str(text).map_err(|error| CredentialsError::Syntax {
            path: String::new(),
            message: error.message().to_string(),
        })?;
        if file.terminal.len() > TERMINALS_MAX {
            return Err(CredentialsError::Count(file.terminal.len()));
        }
        let terminals = file
            .terminal
            .into_iter()
            .map(|entry| {
                let secret = hex_decode(&entry.secret).ok_or(CredentialsError::Terminal {
                    id: entry.id,
                    message: "the secret is not hex".into(),
                })?;
                Ok(Terminal {
                    id: entry.id,
                    secret,
                    rate_per_second: entry.rate_per_second,
                    disabled: entry.disabled,
                })
            })
            .collect::<Result<Vec<_>, CredentialsError>>()?;
        Credentials::new(terminals)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let file = File {
            terminal: self
                .terminals
                .iter()
                .map(|t| FileTerminal {
                    id: t.id,
                    secret: hex_encode(&t.secret),
                    rate_per_second: t.rate_per_second,
                    disabled: t.disabled,
                })
                .collect(),
        };
        let body = toml::to_string(&file).expect("credentials serialise");
        format!(
            "# ledgerd POS terminal credentials: terminal ids and their HMAC secrets.\n\
             # Keep this file secret (mode 0600). Format: docs/protocol.md, \"Credentials file\".\n\n{body}"
        )
    }

    /// The terminals, in file order.
    pub fn terminals(&self) -> &[Terminal] {
        &self.terminals
    }

    /// The terminal with this id (enabled or not).
    pub fn terminal(&self, id: u32) -> Option<&Terminal> {
        self.terminals.iter().find(|terminal| terminal.id == id)
    }

    /// The terminals not disabled, in file order.
    pub fn enabled(&self) -> impl Iterator<Item = &Terminal> {
        self.terminals.iter().filter(|terminal| !terminal.disabled)
    }
}

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        for nibble in [byte >> 4, byte & 0x0f] {
            text.push(char::from(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    text
}

/// Bytes of a hex string (either case), or `None`.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |digit: u8| char::from(digit).to_digit(16).and_then(|v| u8::try_from(v).ok());
    digits.chunks(2).map(|pair| Some(value(*pair.first()?)? << 4 | value(*pair.get(1)?)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(id: u32) -> Terminal {
        Terminal { id, secret: vec![id as u8; 32], rate_per_second: None, disabled: false }
    }

    #[test]
    fn a_file_round_trips_and_never_prints_secrets() {
        let mut terminals = vec![terminal(1), terminal(2)];
        terminals[1].rate_per_second = Some(50);
        terminals.push(Terminal { disabled: true, ..terminal(7) });
        let credentials = Credentials::new(terminals).unwrap();
        let text = credentials.to_toml();
        assert_eq!(Credentials::parse(&text).unwrap(), credentials);
        assert_eq!(text.matches("disabled = true").count(), 1, "only where it is true: {text}");
        let enabled: Vec<u32> = credentials.enabled().map(|t| t.id).collect();
        assert_eq!(enabled, [1, 2]);
        assert!(!format!("{credentials:?}").contains("0101"));
        assert_eq!(credentials.terminal(2).unwrap().rate_per_second, Some(50));
        assert!(credentials.terminal(3).is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_terminal_named() {
        let secret = "ab".repeat(32);
        let cases = [
            ("", "terminal"),
            ("[[terminal]]\nid = 1\n", "secret"),
            (&format!("[[terminal]]\nid = 1\nsecret = \"{secret}\"\nsurprise = 1\n"), "surprise"),
            (&format!("[[terminal]]\nid = 1\nsecret = \"zz{}\"\n", &secret[2..]), "not hex"),
            ("[[terminal]]\nid = 1\nsecret = \"abcd\"\n", "16..=64"),
            (&format!("[[terminal]]\nid = 0\nsecret = \"{secret}\"\n"), "reserved"),
            (
                &format!(
                    "[[terminal]]\nid = 4\nsecret = \"{secret}\"\n[[terminal]]\nid = 4\nsecret = \"{secret}\"\n"
                ),
                "twice",
            ),
        ];
        for (text, expected) in cases {
            let error = Credentials::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex_encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("g0"), None);
    }
}
