//! Who may call the admin API: bearer tokens with a role, kept as SHA-256 hashes in a TOML file
//! (docs/admin-api.md, "Auth").
//!
//! The file is the store of record, like the POS credentials: on the first start (the default
//! path, missing) `ledgerd` creates it with one `admin` token, random 256 bits, prints the
//! token once on stdout and keeps only its hash (mode 0600, written to a temporary file,
//! fsync'd and renamed). A presented token is hashed and compared with every stored hash in
//! constant time, all of them, so the time an answer takes says nothing about which one
//! nearly matched.

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// What a token may do. Each role may do what the roles before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads only.
    Auditor,
    /// Reads, voids holds, refunds.
    Support,
    /// Every write.
    Operator,
    /// Terminals, rules, rates, snapshots.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 4] = [Role::Auditor, Role::Support, Role::Operator, Role::Admin];

    /// The role's name, as in the tokens file and the OpenAPI document.
    pub fn name(self) -> &'static str {
        match self {
            Role::Auditor => "auditor",
            Role::Support => "support",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Prefix of every token, so that one found in a log or a paste is recognisable.
pub const TOKEN_PREFIX: &str = "ldgr_";

/// Tokens a file may hold.
pub const TOKENS_MAX: usize = 1_024;

/// Largest tokens file read.
const TOKENS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// One token as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    /// Who holds it: logged with every request it makes and recorded with every write.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token, 64 lowercase hex digits.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default, rename = "token")]
    tokens: Vec<StoredToken>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The tokens the server accepts.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<(Principal, [u8; 32])>,
}

/// A token name: 1..=64 bytes of `[A-Za-z0-9_.@-]`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.@-".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        bail!("token name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 _ . @ -");
    }
    Ok(())
}

fn hash(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// The tokens of `stored`, checked: valid names, unique, valid hashes.
    pub fn new(stored: &[StoredToken]) -> anyhow::Result<Tokens> {
        if stored.len() > TOKENS_MAX {
            bail!("at most {TOKENS_MAX} tokens");
        }
        let mut entries: Vec<(Principal, [u8; 32])> = Vec::with_capacity(stored.len());
        for token in stored {
            check_name(&token.name)?;
            if entries.iter().any(|(principal, _)| principal.name == token.name) {
                bail!("token name {:?} appears twice", token.name);
            }
            let digest = unhex(&token.sha256).with_context(|| {
                format!("token {:?}: sha256 must be 64 lowercase hex digits", token.name)
            })?;
            entries.push((Principal { name: token.name.clone(), role: token.role }, digest));
        }
        Ok(Tokens { entries })
    }

    /// Who `presented` belongs to: every stored hash is compared, in constant time.
    pub fn verify(&self, presented: &str) -> Option<Principal> {
        let digest = hash(presented);
        let mut found = None;
        for (principal, stored) in &self.entries {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A new random token (`ldgr_` and 64 hex digits) and how the file stores it.
pub fn generate(name: &str, role: Role) -> anyhow::Result<(String, StoredToken)> {
    check_name(name)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
    let stored = StoredToken { name: name.to_string(), role, sha256: hex(&hash(&token)) };
    Ok((token, stored))
}

/// Reads a tokens file.
pub fn load(path: &Path) -> anyhow::Result<Tokens> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, TOKENS_FILE_BYTES_MAX), &mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let parsed: TokensFile =
        toml::from_str(&text).with_context(|| format!("invalid tokens file {}", path.display()))?;
    Tokens::new(&parsed.tokens).with_context(|| format!("invalid tokens file {}", path.display()))
}

/// Writes `tokens` to `path` atomically, mode 0600.
pub fn store(path: &Path, tokens: &[StoredToken]) -> anyhow::Result<()> {
    let text = toml::to_string(&TokensFile { tokens: tokens.to_vec() })?;
    let header = "# ledgerd admin API tokens: SHA-256 hashes only (docs/admin-api.md)\n";
    crate::private_file::write(path, format!("{header}{text}").as_bytes())
}

/// Loads the tokens file, creating the default one (with one `admin` token, printed once on
/// stdout) when it is missing. A file named explicitly must exist.
pub fn load_or_create(path: &Path, default: &Path) -> anyhow::Result<Tokens> {
    if !path.exists() {
        if path != default {
            bail!("admin tokens file {} does not exist", path.display());
        }
        let (token, stored) = generate("admin", Role::Admin)?;
        store(path, &[stored]).with_context(|| format!("cannot create {}", path.display()))?;
        // The contract with operators: the token is shown here once and never again.
        println!("ledgerd: admin API token (role admin, shown once): {token}");
        println!("ledgerd: admin API token hashes written to {}", path.display());
        tracing::info!(path = %path.display(), "created the admin tokens file with token \"admin\"");
    }
    crate::private_file::warn_if_shared(path, "admin tokens")?;
    load(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_token_is_known_by_its_hash_only() {
        let (token, stored) = generate("ops-1", Role::Operator).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64);
        assert!(!stored.sha256.contains(&token[TOKEN_PREFIX.len()..]));
        let tokens = Tokens::new(&[stored]).unwrap();
        let principal = tokens.verify(&token).unwrap();
        assert_eq!((principal.name.as_str(), principal.role), ("ops-1", Role::Operator));
        assert_eq!(tokens.verify(&format!("{token}x")), None);
        assert_eq!(tokens.verify(""), None);
    }

    #[test]
    fn bad_token_files_are_refused() {
        let (_, good) = generate("a", Role::Auditor).unwrap();
        let twice = Tokens::new(&[good.clone(), good.clone()]);
        assert!(twice.unwrap_err().to_string().contains("twice"));
        let bad_hash = StoredToken { sha256: "00".into(), ..good.clone() };
        assert!(Tokens::new(&[bad_hash]).is_err());
        let upper = StoredToken { sha256: good.sha256.to_uppercase(), ..good.clone() };
        assert!(Tokens::new(&[upper]).is_err());
        for name in ["", "with space", &"x".repeat(65)] {
            let named = StoredToken { name: name.to_string(), ..good.clone() };
            assert!(Tokens::new(&[named]).is_err(), "{name:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-tokens.toml");
        std::fs::write(&path, "[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"\"\n").unwrap();
        assert!(load(&path).is_err(), "an unknown role");
        std::fs::write(&path, "[[token]]\nname = \"a\"\nrole = \"admin\"\nextra = 1\n").unwrap();
        assert!(load(&path).is_err(), "an unknown field");
    }

    #[test]
    fn the_default_file_is_created_once_with_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-tokens.toml");
        let tokens = load_or_create(&path, &path).unwrap();
        assert_eq!(tokens.len(), 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(TOKEN_PREFIX), "no token in the file: {text}");
        // A second start reads it as it is.
        let again = load_or_create(&path, &path).unwrap();
        assert_eq!(again.entries, tokens.entries);
        // A file named explicitly must exist.
        let other = dir.path().join("other.toml");
        assert!(load_or_create(&other, &path).is_err());
    }
}
