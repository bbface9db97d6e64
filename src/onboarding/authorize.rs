//! Pure pieces of the authorization flow: the one-time `state` and its
//! hash, the authorization URL exactly as the provider's document spells
//! it, the trusted app's name, and checks of caller input.
//!
//! Does not: store anything, read a clock, or talk to the PBX.

use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::domain::{PbxBaseUrl, TenantId, ValidationError};

/// Random bytes in a state: 256 bits, well above the 128 the issue asks.
const STATE_BYTES: usize = 32;
const MAX_STATE_LEN: usize = 256;
const MAX_CODE_LEN: usize = 1024;

/// A new one-time state: 32 random bytes, base64url without padding (43
/// characters, safe in a URL without escaping).
pub fn new_state() -> String {
    let bytes: [u8; STATE_BYTES] = rand::thread_rng().gen();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database keeps of a state: its SHA-256. A copy of the database
/// cannot complete anyone's authorization.
pub fn state_hash(state: &str) -> [u8; 32] {
    Sha256::digest(state.as_bytes()).into()
}

/// A state as a caller sends it back: base64url characters, bounded.
pub fn validate_state(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() || s.len() > MAX_STATE_LEN {
        return Err(ValidationError::new(
            "state",
            format!(
                "must be 1 to {MAX_STATE_LEN} characters: the state printed by BeginAuthorization"
            ),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ValidationError::new(
            "state",
            "contains characters a state from BeginAuthorization never has (only letters, digits, - and _)",
        ));
    }
    Ok(())
}

/// An authorization code: visible ASCII (it goes into a form body), bounded.
pub fn validate_code(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::new(
            "code",
            "is required: the code the PBX sent to the redirect URI after the user allowed access",
        ));
    }
    if s.len() > MAX_CODE_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::new(
            "code",
            format!("must be at most {MAX_CODE_LEN} visible ASCII characters, as the PBX sends it"),
        ));
    }
    Ok(())
}

/// `<base>/oauth/authorize?response_type=code&client_id=..&redirect_uri=..&scope=all&state=..`,
/// form-URL-encoded in the document's order (its example encodes
/// `https://your_site.com` as `https%3A%2F%2Fyour_site.com`).
pub fn authorization_url(
    base: &PbxBaseUrl,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "all")
        .append_pair("state", state)
        .finish();
    format!("{}?{query}", base.join("/oauth/authorize"))
}

/// A short suffix that makes each created app's name unique: 6 hex digits.
pub fn new_suffix() -> String {
    let bytes: [u8; 3] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// The trusted app's name from the configured template.
pub fn app_name(template: &str, tenant: &TenantId, suffix: &str) -> String {
    template
        .replace("{tenant_id}", tenant.as_str())
        .replace("{suffix}", suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_is_encoded_as_in_the_document() {
        let base = PbxBaseUrl::from_trusted("https://pbx.example.com/").unwrap();
        let url = authorization_url(
            &base,
            "a80f1e618ddd4d4584e2bd48fd404194",
            "https://your_site.com",
            "st4te_-x",
        );
        assert_eq!(
            url,
            "https://pbx.example.com/oauth/authorize?response_type=code\
             &client_id=a80f1e618ddd4d4584e2bd48fd404194\
             &redirect_uri=https%3A%2F%2Fyour_site.com&scope=all&state=st4te_-x"
        );
        // Query characters in the redirect URI are escaped too.
        let url = authorization_url(&base, "id", "https://crm/cb?a=1&b=2 3", "s");
        assert!(url.contains("redirect_uri=https%3A%2F%2Fcrm%2Fcb%3Fa%3D1%26b%3D2+3&"));
    }

    #[test]
    fn states_are_long_random_and_only_hashed() {
        let a = new_state();
        let b = new_state();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        validate_state(&a).unwrap();
        assert_eq!(state_hash(&a), state_hash(&a));
        assert_ne!(state_hash(&a), state_hash(&b));
        assert_eq!(
            hex::encode(state_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for bad in ["", "a b", "a/b", "ü", &"a".repeat(257)] {
            assert!(validate_state(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn codes_and_names() {
        validate_code("aIlsm1bCglDGvQKShmJAhHrBhDyshn").unwrap();
        for bad in ["", "a b", "a\n", &"c".repeat(1025)] {
            assert!(validate_code(bad).is_err(), "{bad:?}");
        }
        let s = new_suffix();
        assert_eq!(s.len(), 6);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        let id = TenantId::parse("acme").unwrap();
        assert_eq!(
            app_name("pbx-tokend {tenant_id} {suffix}", &id, "1a2b3c"),
            "pbx-tokend acme 1a2b3c"
        );
    }
}
