//! Checks JSON Web Tokens from identity providers: the signature against the provider's
//! published keys, then the claims against the rules of a JWT role or an OIDC connector.
//!
//! Nothing here touches the network: the server fetches and caches key sets and passes
//! them in. Every rejection names the claim or header at fault, for the operator log and
//! the audit log; the client only learns that the login failed.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Leeway applied to `exp`, `nbf` and `iat` when a rule names none, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// The reason a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error(
        "header `alg` is `{0}`, which is not accepted: tokens must be signed with an asymmetric algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
    )]
    Algorithm(String),
    #[error("header `kid` `{0}` names no key in the provider's key set")]
    UnknownKey(String),
    #[error("key `{kid}` cannot verify `{alg}` signatures: {why}")]
    KeyMismatch {
        kid: String,
        alg: String,
        why: String,
    },
    #[error("the signature does not verify against key `{0}`")]
    Signature(String),
    #[error("claim `{claim}`: {problem}")]
    Claim { claim: String, problem: String },
}

impl JwtError {
    fn claim(claim: &str, problem: impl Into<String>) -> JwtError {
        JwtError::Claim {
            claim: claim.to_string(),
            problem: problem.into(),
        }
    }

    /// Returns a short code for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed_jwt",
            JwtError::Algorithm(_) => "algorithm_not_accepted",
            JwtError::UnknownKey(_) => "unknown_key",
            JwtError::KeyMismatch { .. } => "key_mismatch",
            JwtError::Signature(_) => "bad_signature",
            JwtError::Claim { .. } => "claim_rejected",
        }
    }
}

/// The rules a token's claims must satisfy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// The exact `iss` value.
    pub issuer: String,
    /// Audiences the token may be for. Empty means the token must carry no `aud` at all.
    pub audiences: Vec<String>,
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// Claims that must match one of their glob patterns (`*` any run of characters, `?` one).
    pub bound_claims: BTreeMap<String, Vec<String>>,
    /// The claim that names the principal, such as `sub` or `preferred_username`.
    pub user_claim: String,
    /// The claim that carries the principal's groups. When set, the token must carry it as an
    /// array of strings: a missing claim is an error, never a login with no groups.
    pub groups_claim: Option<String>,
    /// The `nonce` an OpenID Connect ID token must carry.
    pub nonce: Option<String>,
}

/// The identity a verified token gives its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The value of the user claim.
    pub name: String,
    /// The groups claim's values, or empty when the rules name no groups claim.
    pub groups: Vec<String>,
    /// `exp`, in unix seconds.
    pub expires_at: i64,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// Every claim, for bound-claim reporting and user linking.
    pub claims: Map<String, Value>,
}

/// The header fields the server needs before it verifies a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHeader {
    pub alg: String,
    pub kid: Option<String>,
}

/// Reads a token's header without trusting it.
///
/// # Errors
/// [`JwtError::Malformed`] when the token is not three base64url parts with a JSON header.
pub fn peek_header(token: &str) -> Result<TokenHeader, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three parts separated by dots".into(),
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed("the header is not base64url".into()))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("the header is not JSON".into()))?;
    let alg = value
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Malformed("the header has no `alg`".into()))?
        .to_string();
    let kid = match value.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed("header `kid` is not a string".into())),
    };
    Ok(TokenHeader { alg, kid })
}

/// Maps an accepted `alg` to its algorithm: asymmetric ones only. `none` and HMAC are
/// rejected, because anyone could sign HMAC with a provider's public key as the secret.
fn accepted_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A provider's signing keys, parsed from a JWKS document. Keys that cannot be parsed or
/// are not for signatures are skipped, so one exotic key does not lock everyone out.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`).
    ///
    /// # Errors
    /// A message when the document is not JSON with a `keys` array, or contains no usable key.
    pub fn from_json(text: &[u8]) -> Result<KeySet, String> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| format!("the key set is not JSON: {e}"))?;
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no `keys` array")?;
        let keys: Vec<Jwk> = entries
            .iter()
            .filter_map(|entry| serde_json::from_value::<Jwk>(entry.clone()).ok())
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .collect();
        if keys.is_empty() {
            return Err("the key set contains no usable signing key".into());
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when a key has this id.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys
            .iter()
            .any(|k| k.common.key_id.as_deref() == Some(kid))
    }

    /// Picks the key for a header: by `kid`, or the only key able to verify `alg` when the
    /// token names none.
    fn select(&self, header: &TokenHeader, alg: Algorithm) -> Result<&Jwk, JwtError> {
        match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
                .ok_or_else(|| JwtError::UnknownKey(kid.clone())),
            None => {
                let mut fitting = self
                    .keys
                    .iter()
                    .filter(|k| key_fits(k, alg, &header.alg).is_ok());
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    _ => Err(JwtError::UnknownKey("(none in the header)".into())),
                }
            }
        }
    }
}

/// Checks that a key may verify `alg`: its type and curve fit, and its own `alg`, when it
/// declares one, is the same.
fn key_fits(jwk: &Jwk, alg: Algorithm, alg_name: &str) -> Result<(), String> {
    if let Some(declared) = &jwk.common.key_algorithm {
        let declared = format!("{declared:?}");
        if declared != alg_name {
            return Err(format!("the key is declared for `{declared}`"));
        }
    }
    let fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(okp) => {
            okp.curve == EllipticCurve::Ed25519 && alg == Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not accepted".into());
        }
    };
    if fits {
        Ok(())
    } else {
        Err("the key's type does not match the algorithm".into())
    }
}

/// Verifies a token's signature with `keys` and its claims with `rules` at time `now`
/// (unix seconds).
///
/// # Errors
/// The first problem found, naming the header field or claim.
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &ClaimRules,
    now: i64,
) -> Result<VerifiedToken, JwtError> {
    let header = peek_header(token)?;
    let alg =
        accepted_algorithm(&header.alg).ok_or_else(|| JwtError::Algorithm(header.alg.clone()))?;
    let jwk = keys.select(&header, alg)?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .unwrap_or_else(|| "(unnamed)".into());
    key_fits(jwk, alg, &header.alg).map_err(|why| JwtError::KeyMismatch {
        kid: kid.clone(),
        alg: header.alg.clone(),
        why,
    })?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtError::KeyMismatch {
        kid: kid.clone(),
        alg: header.alg.clone(),
        why: e.to_string(),
    })?;

    // Only the signature is checked here. The claim checks below name the claim at fault
    // and apply one leeway to all three times.
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::Signature(kid.clone()),
            jsonwebtoken::errors::ErrorKind::Json(_)
            | jsonwebtoken::errors::ErrorKind::Base64(_)
            | jsonwebtoken::errors::ErrorKind::Utf8(_) => {
                JwtError::Malformed("the claims are not a JSON object".into())
            }
            _ => JwtError::Signature(kid.clone()),
        },
    )?;
    check_claims(data.claims, rules, now)
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| JwtError::claim(name, "is not a time in seconds")),
        Some(_) => Err(JwtError::claim(name, "is not a number of seconds")),
    }
}

fn format_unix(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| seconds.to_string())
}

/// Checks verified claims against the rules.
///
/// # Errors
/// The first claim that fails, by name.
pub fn check_claims(
    claims: Map<String, Value>,
    rules: &ClaimRules,
    now: i64,
) -> Result<VerifiedToken, JwtError> {
    let leeway = i64::try_from(rules.leeway).unwrap_or(i64::MAX);

    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(iss)) => {
            return Err(JwtError::claim(
                "iss",
                format!("`{iss}` is not the configured issuer `{}`", rules.issuer),
            ));
        }
        Some(_) => return Err(JwtError::claim("iss", "is not a string")),
        None => return Err(JwtError::claim("iss", "is missing")),
    }

    let expires_at =
        time_claim(&claims, "exp")?.ok_or_else(|| JwtError::claim("exp", "is missing"))?;
    if now > expires_at.saturating_add(leeway) {
        return Err(JwtError::claim(
            "exp",
            format!("the token expired at {}", format_unix(expires_at)),
        ));
    }
    if let Some(nbf) = time_claim(&claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(JwtError::claim(
            "nbf",
            format!(
                "the token is not valid before {}, {} s from now, beyond the {} s leeway",
                format_unix(nbf),
                nbf - now,
                rules.leeway
            ),
        ));
    }
    if let Some(iat) = time_claim(&claims, "iat")?
        && iat > now.saturating_add(leeway)
    {
        return Err(JwtError::claim(
            "iat",
            format!(
                "the token was issued {} s in the future ({}), beyond the {} s leeway",
                iat - now,
                format_unix(iat),
                rules.leeway
            ),
        ));
    }

    check_audience(claims.get("aud"), &rules.audiences)?;

    if let Some(expected) = &rules.nonce {
        match claims.get("nonce") {
            Some(Value::String(nonce)) if nonce == expected => {}
            Some(_) => return Err(JwtError::claim("nonce", "does not match this login")),
            None => return Err(JwtError::claim("nonce", "is missing")),
        }
    }

    for (claim, patterns) in &rules.bound_claims {
        let values = claim_strings(&claims, claim)?;
        let matched = values
            .iter()
            .any(|v| patterns.iter().any(|p| glob_match(p, v)));
        if !matched {
            return Err(JwtError::claim(
                claim,
                format!(
                    "{} does not match the role's {}",
                    describe_values(&values),
                    describe_patterns(patterns)
                ),
            ));
        }
    }

    let name = match claims.get(&rules.user_claim) {
        Some(Value::String(name)) if !name.trim().is_empty() => name.clone(),
        Some(Value::String(_)) => return Err(JwtError::claim(&rules.user_claim, "is empty")),
        Some(_) => {
            return Err(JwtError::claim(
                &rules.user_claim,
                "is not a string, so it cannot name the principal",
            ));
        }
        None => {
            return Err(JwtError::claim(
                &rules.user_claim,
                "is missing, so the token names no principal",
            ));
        }
    };

    let groups = match &rules.groups_claim {
        None => Vec::new(),
        Some(claim) => match claims.get(claim) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        JwtError::claim(claim, "contains a value that is not a string")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(JwtError::claim(
                    claim,
                    "is not an array of strings, as the groups claim must be",
                ));
            }
            None => {
                return Err(JwtError::claim(
                    claim,
                    "is missing; the groups claim is configured, so a token without it is rejected rather than signed in with no groups",
                ));
            }
        },
    };

    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(VerifiedToken {
        name,
        groups,
        expires_at,
        subject,
        claims,
    })
}

fn check_audience(aud: Option<&Value>, audiences: &[String]) -> Result<(), JwtError> {
    let values: Vec<&str> = match aud {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| JwtError::claim("aud", "contains a value that is not a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtError::claim("aud", "is neither a string nor an array")),
    };
    if audiences.is_empty() {
        if aud.is_some_and(|a| !a.is_null()) {
            return Err(JwtError::claim(
                "aud",
                "is present, but the role binds no audience: bind the audience the token is for",
            ));
        }
        return Ok(());
    }
    if values.is_empty() {
        return Err(JwtError::claim(
            "aud",
            format!(
                "is missing; the role requires one of {}",
                describe_patterns(audiences)
            ),
        ));
    }
    if values.iter().any(|v| audiences.iter().any(|a| a == v)) {
        Ok(())
    } else {
        Err(JwtError::claim(
            "aud",
            format!(
                "{} is not one of the role's audiences {}",
                describe_values(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>()),
                describe_patterns(audiences)
            ),
        ))
    }
}

/// Returns the string forms of a claim: a string, a number or a boolean, or an array of
/// those.
fn claim_strings(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, JwtError> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match claims.get(claim) {
        None | Some(Value::Null) => Err(JwtError::claim(claim, "is missing")),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                scalar(v).ok_or_else(|| JwtError::claim(claim, "contains a value that is not text"))
            })
            .collect(),
        Some(value) => scalar(value)
            .map(|s| vec![s])
            .ok_or_else(|| JwtError::claim(claim, "is an object, not a value to match")),
    }
}

fn describe_values(values: &[String]) -> String {
    match values {
        [one] => format!("`{one}`"),
        many => format!(
            "[{}]",
            many.iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn describe_patterns(patterns: &[String]) -> String {
    describe_values(patterns)
}

/// Matches `text` against a glob where `*` stands for any run of characters (slashes
/// included) and `?` for one character; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently absorbs up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') => {
                p += 1;
                t += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    struct Signer {
        encoding: EncodingKey,
        jwk: Value,
        alg: Algorithm,
    }

    fn ec_signer(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = pair.public_key().as_ref();
        Signer {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&public[33..65])}),
            alg: Algorithm::ES256,
        }
    }

    fn ed_signer(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())}),
            alg: Algorithm::EdDSA,
        }
    }

    impl Signer {
        fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = self.jwk["kid"].as_str().map(str::to_string);
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    fn keys(signers: &[&Signer]) -> KeySet {
        let doc = json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()});
        KeySet::from_json(doc.to_string().as_bytes()).unwrap()
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://token.actions.example".into(),
            audiences: vec!["latchkey".into()],
            leeway: DEFAULT_LEEWAY_SECS,
            bound_claims: BTreeMap::from([
                ("repository".into(), vec!["acme/*".into()]),
                ("ref".into(), vec!["refs/heads/main".into()]),
            ]),
            user_claim: "sub".into(),
            groups_claim: None,
            nonce: None,
        }
    }

    fn claims() -> Value {
        json!({
            "iss": "https://token.actions.example",
            "aud": "latchkey",
            "sub": "repo:acme/api:ref:refs/heads/main",
            "repository": "acme/api",
            "ref": "refs/heads/main",
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 300,
        })
    }

    fn with(mut value: Value, key: &str, new: Value) -> Value {
        value[key] = new;
        value
    }

    fn without(mut value: Value, key: &str) -> Value {
        value.as_object_mut().unwrap().remove(key);
        value
    }

    fn claim_of(error: JwtError) -> String {
        match error {
            JwtError::Claim { claim, .. } => claim,
            other => panic!("expected a claim error, got {other}"),
        }
    }

    #[test]
    fn verify_accepts_ec_and_ed25519_keys() {
        for signer in [ec_signer("k1"), ed_signer("k1")] {
            let token = signer.sign(&claims());
            let verified = verify(&token, &keys(&[&signer]), &rules(), NOW).unwrap();
            assert_eq!(verified.name, "repo:acme/api:ref:refs/heads/main");
            assert_eq!(verified.expires_at, NOW + 300);
            assert!(verified.groups.is_empty());
        }
    }

    #[test]
    fn verify_rejects_another_keys_signature() {
        let good = ec_signer("k1");
        let forger = ec_signer("k1");
        let token = forger.sign(&claims());
        assert_eq!(
            verify(&token, &keys(&[&good]), &rules(), NOW).unwrap_err(),
            JwtError::Signature("k1".into())
        );
    }

    #[test]
    fn verify_rejects_none_and_hmac() {
        let signer = ec_signer("k1");
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
        );
        assert_eq!(
            verify(&none, &keys(&[&signer]), &rules(), NOW).unwrap_err(),
            JwtError::Algorithm("none".into())
        );
        // An HMAC token keyed with the public key's JSON, the classic confusion attack.
        let secret = signer.jwk.to_string();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hmac = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(&hmac, &keys(&[&signer]), &rules(), NOW).unwrap_err(),
            JwtError::Algorithm("HS256".into())
        );
    }

    #[test]
    fn verify_rejects_mismatched_key_algorithm() {
        let signer = ec_signer("k1");
        let token = signer.sign(&claims());
        let mut declared = signer.jwk.clone();
        declared["alg"] = json!("ES384");
        let set = KeySet::from_json(json!({"keys": [declared]}).to_string().as_bytes()).unwrap();
        assert!(matches!(
            verify(&token, &set, &rules(), NOW).unwrap_err(),
            JwtError::KeyMismatch { .. }
        ));
        // An Ed25519 key named like the EC one cannot verify ES256.
        let ed = ed_signer("k1");
        assert!(matches!(
            verify(&token, &keys(&[&ed]), &rules(), NOW).unwrap_err(),
            JwtError::KeyMismatch { .. }
        ));
    }

    #[test]
    fn verify_rejects_symmetric_keys() {
        let signer = ec_signer("k1");
        let token = signer.sign(&claims());
        let set = KeySet::from_json(
            json!({"keys": [{"kty": "oct", "kid": "k1", "k": "c2VjcmV0"}]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            verify(&token, &set, &rules(), NOW).unwrap_err(),
            JwtError::KeyMismatch { .. }
        ));
    }

    #[test]
    fn verify_reports_unknown_kid() {
        let signer = ec_signer("new-key");
        let old = ec_signer("old-key");
        let token = signer.sign(&claims());
        assert_eq!(
            verify(&token, &keys(&[&old]), &rules(), NOW).unwrap_err(),
            JwtError::UnknownKey("new-key".into())
        );
        assert!(keys(&[&old, &signer]).has_kid("new-key"));
    }

    #[test]
    fn issuer_must_match_exactly() {
        let signer = ec_signer("k1");
        for iss in [
            "https://token.actions.example/",
            "https://TOKEN.actions.example",
            "https://evil.example",
        ] {
            let token = signer.sign(&with(claims(), "iss", json!(iss)));
            assert_eq!(
                claim_of(verify(&token, &keys(&[&signer]), &rules(), NOW).unwrap_err()),
                "iss"
            );
        }
    }

    #[test]
    fn times_use_the_leeway_and_name_the_claim() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        let future = |secs: i64| {
            with(
                with(claims(), "iat", json!(NOW + secs)),
                "nbf",
                json!(NOW + secs),
            )
        };
        // Issued 30 s in the future: inside the default 60 s leeway.
        assert!(verify(&signer.sign(&future(30)), &set, &rules(), NOW).is_ok());
        // 120 s in the future: rejected, naming the claim.
        let error = verify(&signer.sign(&future(120)), &set, &rules(), NOW).unwrap_err();
        assert_eq!(claim_of(error.clone()), "nbf");
        assert!(error.to_string().contains("120 s from now"), "{error}");
        let only_iat = with(claims(), "iat", json!(NOW + 120));
        let error = verify(&signer.sign(&only_iat), &set, &rules(), NOW).unwrap_err();
        assert_eq!(claim_of(error.clone()), "iat");
        assert!(error.to_string().contains("in the future"), "{error}");
        // Expired 30 s ago passes; 120 s ago fails on `exp`.
        let expired = |secs: i64| with(claims(), "exp", json!(NOW - secs));
        assert!(verify(&signer.sign(&expired(30)), &set, &rules(), NOW).is_ok());
        assert_eq!(
            claim_of(verify(&signer.sign(&expired(120)), &set, &rules(), NOW).unwrap_err()),
            "exp"
        );
        // A configured leeway of zero is strict.
        let strict = ClaimRules {
            leeway: 0,
            ..rules()
        };
        assert_eq!(
            claim_of(verify(&signer.sign(&future(30)), &set, &strict, NOW).unwrap_err()),
            "nbf"
        );
        // `exp` is required.
        assert_eq!(
            claim_of(
                verify(&signer.sign(&without(claims(), "exp")), &set, &rules(), NOW).unwrap_err()
            ),
            "exp"
        );
    }

    #[test]
    fn audience_string_or_array_must_contain_a_bound_one() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        for aud in [json!("latchkey"), json!(["other", "latchkey"])] {
            let token = signer.sign(&with(claims(), "aud", aud));
            assert!(verify(&token, &set, &rules(), NOW).is_ok());
        }
        for aud in [json!("other"), json!(["other", "more"]), json!([])] {
            let token = signer.sign(&with(claims(), "aud", aud));
            assert_eq!(
                claim_of(verify(&token, &set, &rules(), NOW).unwrap_err()),
                "aud"
            );
        }
        let token = signer.sign(&without(claims(), "aud"));
        assert_eq!(
            claim_of(verify(&token, &set, &rules(), NOW).unwrap_err()),
            "aud"
        );
    }

    #[test]
    fn verify_without_audiences_rejects_aud() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        let open = ClaimRules {
            audiences: Vec::new(),
            ..rules()
        };
        assert!(verify(&signer.sign(&without(claims(), "aud")), &set, &open, NOW).is_ok());
        for aud in [json!("latchkey"), json!(["latchkey"]), json!([])] {
            let token = signer.sign(&with(claims(), "aud", aud));
            assert_eq!(
                claim_of(verify(&token, &set, &open, NOW).unwrap_err()),
                "aud"
            );
        }
    }

    #[test]
    fn bound_claims_match_globs_and_name_the_claim() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        let other_repo = with(claims(), "repository", json!("evil/api"));
        let error = verify(&signer.sign(&other_repo), &set, &rules(), NOW).unwrap_err();
        assert_eq!(claim_of(error.clone()), "repository");
        assert!(error.to_string().contains("`evil/api`"), "{error}");
        let branch = with(claims(), "ref", json!("refs/heads/feature"));
        assert_eq!(
            claim_of(verify(&signer.sign(&branch), &set, &rules(), NOW).unwrap_err()),
            "ref"
        );
        let missing = without(claims(), "ref");
        assert_eq!(
            claim_of(verify(&signer.sign(&missing), &set, &rules(), NOW).unwrap_err()),
            "ref"
        );
    }

    #[test]
    fn groups_claim_must_be_present_and_an_array_of_strings() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        let grouped = ClaimRules {
            groups_claim: Some("groups".into()),
            ..rules()
        };
        let token = signer.sign(&with(claims(), "groups", json!(["ci", "deploy"])));
        assert_eq!(
            verify(&token, &set, &grouped, NOW).unwrap().groups,
            vec!["ci".to_string(), "deploy".to_string()]
        );
        for bad in [json!("ci"), json!([1, 2]), json!({"ci": true})] {
            let token = signer.sign(&with(claims(), "groups", bad));
            assert_eq!(
                claim_of(verify(&token, &set, &grouped, NOW).unwrap_err()),
                "groups"
            );
        }
        let error = verify(&signer.sign(&claims()), &set, &grouped, NOW).unwrap_err();
        assert_eq!(claim_of(error.clone()), "groups");
        assert!(error.to_string().contains("no groups"), "{error}");
    }

    #[test]
    fn user_claim_must_be_a_non_empty_string() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        for bad in [json!(""), json!(42)] {
            let token = signer.sign(&with(claims(), "sub", bad));
            assert_eq!(
                claim_of(verify(&token, &set, &rules(), NOW).unwrap_err()),
                "sub"
            );
        }
    }

    #[test]
    fn nonce_must_match_when_expected() {
        let signer = ec_signer("k1");
        let set = keys(&[&signer]);
        let expecting = ClaimRules {
            nonce: Some("n-123".into()),
            ..rules()
        };
        let token = signer.sign(&with(claims(), "nonce", json!("n-123")));
        assert!(verify(&token, &set, &expecting, NOW).is_ok());
        let token = signer.sign(&with(claims(), "nonce", json!("n-999")));
        assert_eq!(
            claim_of(verify(&token, &set, &expecting, NOW).unwrap_err()),
            "nonce"
        );
        assert_eq!(
            claim_of(verify(&signer.sign(&claims()), &set, &expecting, NOW).unwrap_err()),
            "nonce"
        );
    }

    #[test]
    fn verify_without_kid_uses_only_key() {
        let signer = ec_signer("k1");
        let mut header = Header::new(Algorithm::ES256);
        header.kid = None;
        let token = jsonwebtoken::encode(&header, &claims(), &signer.encoding).unwrap();
        assert!(verify(&token, &keys(&[&signer]), &rules(), NOW).is_ok());
        let other = ec_signer("k2");
        assert!(matches!(
            verify(&token, &keys(&[&signer, &other]), &rules(), NOW).unwrap_err(),
            JwtError::UnknownKey(_)
        ));
    }

    #[test]
    fn malformed_tokens_and_key_sets_are_errors() {
        let set = keys(&[&ec_signer("k1")]);
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.sig"] {
            assert!(
                matches!(
                    verify(bad, &set, &rules(), NOW).unwrap_err(),
                    JwtError::Malformed(_)
                ),
                "{bad}"
            );
        }
        assert!(KeySet::from_json(b"not json").is_err());
        assert!(KeySet::from_json(br#"{"keys": []}"#).is_err());
        assert!(KeySet::from_json(br#"{"keys": [{"kty": "nope"}]}"#).is_err());
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("acme/*", "acme/api"));
        assert!(glob_match("acme/*", "acme/"));
        assert!(glob_match("acme/*", "acme/a/b"));
        assert!(!glob_match("acme/*", "acme"));
        assert!(!glob_match("acme/*", "evil/acme/x"));
        assert!(glob_match("refs/heads/main", "refs/heads/main"));
        assert!(!glob_match("refs/heads/main", "refs/heads/main2"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-prod-*", "eu-prod-1"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    proptest::proptest! {
        #[test]
        fn a_literal_pattern_matches_only_itself(a in "[a-z/]{0,12}", b in "[a-z/]{0,12}") {
            proptest::prop_assert_eq!(glob_match(&a, &b), a == b);
        }

        #[test]
        fn star_suffix_matches_every_extension(prefix in "[a-z/]{0,8}", rest in "\\PC{0,12}") {
            let pattern = format!("{prefix}*");
            let text = format!("{prefix}{rest}");
            proptest::prop_assert!(glob_match(&pattern, &text));
        }

        #[test]
        fn verify_never_panics_on_arbitrary_input(token in "\\PC{0,200}") {
            let set = KeySet::from_json(
                br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"AA","y":"AA"}]}"#,
            );
            if let Ok(set) = set {
                let _ = verify(&token, &set, &rules(), NOW);
            }
        }
    }
}
