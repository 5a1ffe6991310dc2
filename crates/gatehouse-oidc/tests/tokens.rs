//! Every case of ../shared/security/tokens.md that the gateway can meet, against a real HTTPS
//! test IdP (discovery + JWKS) run in-process.

use std::time::Duration;

use gatehouse_core::auth::OidcRejection as R;
use gatehouse_core::config::{Config, OidcIssuerConfig};
use gatehouse_oidc::OidcVerifier;
use gatehouse_testidp::{Mode, SigningKey, TestIdp, b64, now};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const AUD: &str = "gatehouse";

fn issuer_config(idp: &TestIdp, extra: &str) -> OidcIssuerConfig {
    let text = format!(
        r#"
        [[identity.oidc]]
        name = "corp"
        issuer = "{}"
        audience = "{AUD}"
        client_id = "gatehouse-cli"
        ca_file = "{}"
        group_mappings = [{{ claim = "team", equals = "data", group = "analysts" }}]
        {extra}
        "#,
        idp.issuer,
        idp.ca_file.display()
    );
    let config =
        Config::parse(&text, std::path::Path::new("/")).unwrap_or_else(|e| panic!("{e:?}"));
    config.identity.oidc[0].clone()
}

fn verifier(idp: &TestIdp, extra: &str) -> OidcVerifier {
    OidcVerifier::new(&[issuer_config(idp, extra)]).unwrap()
}

async fn reject(v: &OidcVerifier, token: &str) -> R {
    match v.verify_token(token).await {
        Ok(id) => panic!("accepted a bad token as {id:?}"),
        Err(r) => r,
    }
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

#[tokio::test]
async fn a_valid_token_names_its_subject_groups_and_issuer() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let mut claims = idp.claims("user-1", AUD);
    claims["groups"] = json!(["dba", 7, "ops"]);
    claims["team"] = json!("data");
    claims["email"] = json!("someone@example.com");
    claims["preferred_username"] = json!("ada\u{1b}[31m");
    let id = v.verify_token(&idp.mint(&claims)).await.unwrap();
    assert_eq!(id.subject, "user-1");
    assert_eq!(id.issuer, "corp");
    assert_eq!(id.principal(), "corp/user-1");
    assert_eq!(id.groups, vec!["dba", "ops", "analysts"]);
    assert_eq!(
        id.display_name, "ada?[31m",
        "control characters are replaced"
    );
    assert!(id.token_id.starts_with("jti:"));
    assert_eq!(
        id.expires_at,
        Some(claims["exp"].as_i64().unwrap() * 1_000_000)
    );
}

#[tokio::test]
async fn j1_alg_none_in_any_spelling_is_refused() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let claims = idp.claims("u", AUD);
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        assert_eq!(reject(&v, &token).await, R::Algorithm, "{alg}");
    }
}

#[tokio::test]
async fn j2_hmac_signed_with_the_public_key_is_refused() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let claims = idp.claims("u", AUD);
    let public = idp.key().jwk.to_string();
    let message = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
            .to_string()
            .as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    for secret in [
        public.as_bytes(),
        idp.key().jwk["n"].as_str().unwrap().as_bytes(),
    ] {
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        assert_eq!(reject(&v, &format!("{message}.{sig}")).await, R::Algorithm);
    }
    // Even an issuer pinned to RS256 only refuses an ES256 token outright.
    let v = verifier(&idp, r#"algorithms = ["RS256"]"#);
    let ec = SigningKey::generate("ec-1", Algorithm::ES256);
    idp.publish_raw(ec);
    let ec = idp.key_by_kid("ec-1");
    let token = ec.sign_raw(&idp.header(&ec), &claims);
    assert_eq!(reject(&v, &token).await, R::Algorithm);
}

#[tokio::test]
async fn j3_tampered_signatures_and_encodings_are_refused() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let token = idp.mint(&idp.claims("u", AUD));
    assert!(v.verify_token(&token).await.is_ok());
    let (head, sig) = token.rsplit_once('.').unwrap();
    let cases = [
        (format!("{head}.{}", &sig[..sig.len() - 4]), R::Signature),
        (format!("{token}AAAA"), R::Signature),
        (format!("{token}=="), R::Malformed),
        (
            token.replacen('-', "+", 1).replacen('_', "/", 1),
            R::Malformed,
        ),
        (format!("{head}. {sig}"), R::Malformed),
        (format!("{token}.{sig}"), R::Malformed),
        (
            format!("{head}.{}", b64(b"not a signature at all")),
            R::Signature,
        ),
    ];
    for (bad, want) in cases {
        if bad == token {
            continue;
        }
        let got = reject(&v, &bad).await;
        // A changed length may also break the base64 itself; either way it is refused.
        assert!(got == want || got == R::Malformed, "{bad}: {got:?}");
    }
}

#[tokio::test]
async fn j5_hostile_or_unknown_kids_are_map_keys_that_miss_with_one_refresh_at_most() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, r#"refresh_cooldown = "1h""#);
    let claims = idp.claims("u", AUD);
    assert!(v.verify_token(&idp.mint(&claims)).await.is_ok());
    let fetches = idp.jwks_fetches();
    let key = idp.key();
    for kid in [
        "../../../../dev/null".to_string(),
        "' OR 1=1--".to_string(),
        "k".repeat(10 * 1024),
        "unknown".to_string(),
    ] {
        let token = key.sign_raw(&json!({"alg": "RS256", "kid": kid}), &claims);
        let r = reject(&v, &token).await;
        assert!(matches!(r, R::UnknownKey | R::Malformed), "{r:?}");
    }
    assert!(
        idp.jwks_fetches() <= fetches + 1,
        "unknown kids refetch at most once per cooldown"
    );
}

#[tokio::test]
async fn j6_keys_named_by_the_token_itself_are_ignored() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let claims = idp.claims("u", AUD);
    let attacker = SigningKey::generate("attacker", Algorithm::ES256);
    for extra in [
        json!({"jwk": attacker.jwk}),
        json!({"jku": "https://evil.example/jwks"}),
        json!({"x5u": "https://evil.example/cert"}),
        json!({"x5c": ["MIIB"]}),
    ] {
        let mut header = json!({"alg": "ES256", "typ": "JWT", "kid": "attacker"});
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_eq!(
            reject(&v, &attacker.sign_raw(&header, &claims)).await,
            R::UnknownKey
        );
        // Claiming the real key's id does not help either.
        header["kid"] = json!("rsa-1");
        header["alg"] = json!("ES256");
        assert_eq!(
            reject(&v, &attacker.sign_raw(&header, &claims)).await,
            R::UnknownKey
        );
    }
}

#[tokio::test]
async fn j7_j8_crit_and_encrypted_tokens_are_refused() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let key = idp.key();
    let claims = idp.claims("u", AUD);
    let crit = key.sign_raw(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp-ext"], "exp-ext": 1}),
        &claims,
    );
    assert_eq!(reject(&v, &crit).await, R::Header);
    let unsigned_inner = format!(
        "{}.{}.",
        b64(b"{\"alg\":\"none\"}"),
        b64(claims.to_string().as_bytes())
    );
    let jwe = format!(
        "{}.{}.{}.{}.{}",
        b64(b"{\"alg\":\"RSA-OAEP\",\"enc\":\"A256GCM\",\"cty\":\"JWT\"}"),
        b64(b"key"),
        b64(b"iv"),
        b64(unsigned_inner.as_bytes()),
        b64(b"tag")
    );
    assert_eq!(reject(&v, &jwe).await, R::Header);
    let enc = key.sign_raw(
        &json!({"alg": "RS256", "kid": "rsa-1", "enc": "A256GCM"}),
        &claims,
    );
    assert_eq!(reject(&v, &enc).await, R::Header);
}

#[tokio::test]
async fn j9_j10_j12_j13_time_and_required_claims() {
    let idp = TestIdp::start().await;
    let v = verifier(
        &idp,
        r#"leeway = "60s"
        max_token_lifetime = "1h""#,
    );
    let base = idp.claims("u", AUD);
    let now = now();
    let ok = |c: Value| idp.mint(&c);
    // J9: leeway 60 s.
    let c = with(
        with(base.clone(), "exp", json!(now - 1)),
        "iat",
        json!(now - 300),
    );
    assert!(v.verify_token(&ok(c)).await.is_ok(), "within the leeway");
    let c = with(
        with(base.clone(), "exp", json!(now - 61)),
        "iat",
        json!(now - 300),
    );
    assert_eq!(reject(&v, &ok(c)).await, R::Expired);
    // J10: required claims.
    for claim in ["exp", "iat", "sub", "aud", "iss"] {
        let r = reject(&v, &ok(without(base.clone(), claim))).await;
        match claim {
            "iss" => assert_eq!(r, R::UnknownIssuer),
            _ => assert_eq!(r, R::MissingClaim(claim.into()), "{claim}"),
        }
    }
    // J12: not yet valid.
    let c = with(base.clone(), "nbf", json!(now + 3600));
    assert_eq!(reject(&v, &ok(c)).await, R::NotYetValid);
    // J13: issued in the future; lifetime over the issuer's maximum.
    let c = with(
        with(base.clone(), "iat", json!(now + 3600)),
        "exp",
        json!(now + 3700),
    );
    assert_eq!(reject(&v, &ok(c)).await, R::NotYetValid);
    let c = with(base.clone(), "exp", json!(now + 7200));
    assert_eq!(reject(&v, &ok(c)).await, R::LifetimeTooLong);
    // Malformed times.
    let c = with(base.clone(), "exp", json!("tomorrow"));
    assert!(v.verify_token(&ok(c)).await.is_err());
}

#[tokio::test]
async fn j14_j23_audience_is_exact_and_several_need_azp() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let base = idp.claims("u", AUD);
    let mint = |c: Value| idp.mint(&c);
    assert_eq!(
        reject(&v, &mint(with(base.clone(), "aud", json!("other-service")))).await,
        R::Audience
    );
    assert_eq!(
        reject(&v, &mint(with(base.clone(), "aud", json!("gatehouse2")))).await,
        R::Audience
    );
    let multi = with(base.clone(), "aud", json!([AUD, "other"]));
    assert_eq!(reject(&v, &mint(multi.clone())).await, R::Audience);
    assert_eq!(
        reject(&v, &mint(with(multi.clone(), "azp", json!("someone-else")))).await,
        R::Audience
    );
    assert!(
        v.verify_token(&mint(with(multi, "azp", json!("gatehouse-cli"))))
            .await
            .is_ok()
    );
    assert!(
        v.verify_token(&mint(with(base, "aud", json!([AUD]))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn j15_issuer_look_alikes_are_unknown() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let base = idp.claims("u", AUD);
    let real = idp.issuer.clone();
    for iss in [
        format!("{real}/"),
        real.replace("https://", "http://"),
        real.replace("https://", "HTTPS://"),
        real.replace("127.0.0.1", "127.0.0.\u{0661}"),
    ] {
        let token = idp.mint(&with(base.clone(), "iss", json!(iss)));
        assert_eq!(reject(&v, &token).await, R::UnknownIssuer, "{iss}");
    }
    let token = idp.mint(&with(base, "iss", json!([real])));
    assert_eq!(
        reject(&v, &token).await,
        R::UnknownIssuer,
        "an issuer array"
    );
}

#[tokio::test]
async fn j16_a_pinned_tenant_claim_must_match() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, r#"required_claims = { tid = "tenant-a" }"#);
    let base = idp.claims("u", AUD);
    assert!(
        v.verify_token(&idp.mint(&with(base.clone(), "tid", json!("tenant-a"))))
            .await
            .is_ok()
    );
    assert_eq!(
        reject(&v, &idp.mint(&with(base.clone(), "tid", json!("tenant-b")))).await,
        R::ClaimMismatch("tid".into())
    );
    assert_eq!(
        reject(&v, &idp.mint(&base)).await,
        R::MissingClaim("tid".into())
    );
}

#[tokio::test]
async fn j17_token_types_are_checked() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let key = idp.key();
    let claims = idp.claims("u", AUD);
    for typ in ["JWT", "at+jwt", "application/at+JWT"] {
        let t = key.sign_raw(
            &json!({"alg": "RS256", "kid": "rsa-1", "typ": typ}),
            &claims,
        );
        assert!(v.verify_token(&t).await.is_ok(), "{typ}");
    }
    for typ in [json!("logout+jwt"), json!("dpop+jwt"), json!(1)] {
        let t = key.sign_raw(
            &json!({"alg": "RS256", "kid": "rsa-1", "typ": typ}),
            &claims,
        );
        assert_eq!(reject(&v, &t).await, R::TokenType, "{typ}");
    }
    let v = verifier(&idp, r#"token_types = ["at+jwt"]"#);
    assert_eq!(
        reject(&v, &idp.mint(&claims)).await,
        R::TokenType,
        "an ID token where access tokens are required"
    );
}

#[tokio::test]
async fn j19_oversized_and_pathological_tokens_are_refused_early() {
    let idp = TestIdp::start().await;
    let v = verifier(&idp, "");
    let mut big = idp.claims("u", AUD);
    big["pad"] = json!("x".repeat(64 * 1024));
    assert_eq!(reject(&v, &idp.mint(&big)).await, R::Malformed);
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let token = format!(
        "{}.{}.{}",
        b64(b"{\"alg\":\"RS256\"}"),
        b64(deep.as_bytes()),
        b64(b"s")
    );
    assert_eq!(
        reject(&v, &token[..token.len().min(8000)]).await,
        R::Malformed
    );
    let deep_small = format!("{}1{}", "[".repeat(2000), "]".repeat(2000));
    let token = format!(
        "{}.{}.{}",
        b64(b"{\"alg\":\"RS256\"}"),
        b64(deep_small.as_bytes()),
        b64(b"s")
    );
    assert_eq!(reject(&v, &token).await, R::Malformed);
    let huge = idp.key().sign_raw(
        &json!({"alg": "RS256", "kid": "rsa-1"}),
        &with(idp.claims("u", AUD), "exp", json!(1e300)),
    );
    assert!(v.verify_token(&huge).await.is_err());
    let huge = format!(
        "{}.{}.{}",
        b64(b"{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}"),
        b64(b"{\"exp\":1e999999}"),
        b64(b"s")
    );
    assert_eq!(reject(&v, &huge).await, R::Malformed);
}

#[tokio::test]
async fn j20_rotation_removal_and_outage() {
    let idp = TestIdp::start_with(vec![SigningKey::generate("ec-1", Algorithm::ES256)]).await;
    let v = verifier(
        &idp,
        r#"jwks_cache_ttl = "1s"
        max_stale = "3s"
        refresh_cooldown = "200ms"
        fetch_timeout = "1s""#,
    );
    let claims = idp.claims("u", AUD);
    let old_token = idp.mint(&claims);
    assert!(v.verify_token(&old_token).await.is_ok());

    // A new key appears: the unknown kid triggers one fetch (once the cooldown since the last
    // one has passed) and the token verifies.
    idp.rotate(SigningKey::generate("ec-2", Algorithm::ES256), false);
    let new_token = idp.mint(&claims);
    assert_eq!(
        reject(&v, &new_token).await,
        R::UnknownKey,
        "within the cooldown"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(v.verify_token(&new_token).await.is_ok());
    // The old key was removed: once the cache expires, its tokens are refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reject(&v, &old_token).await, R::UnknownKey);

    // Outage: cached keys keep working until max_stale, then fail closed.
    idp.set_mode(Mode::Down);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        v.verify_token(&new_token).await.is_ok(),
        "stale keys serve through an outage"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(reject(&v, &new_token).await, R::IdpUnavailable);
    idp.set_mode(Mode::Up);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let back = v.verify_token(&new_token).await;
    assert!(back.is_ok(), "recovers when the IdP returns: {back:?}");

    // A hanging, huge or garbage JWKS never yields keys.
    for mode in [Mode::Hang, Mode::Huge, Mode::Garbage] {
        let fresh = verifier(&idp, r#"fetch_timeout = "1s""#);
        idp.set_mode(mode);
        let started = std::time::Instant::now();
        assert_eq!(
            reject(&fresh, &new_token).await,
            R::IdpUnavailable,
            "{mode:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode:?} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn j21_weak_keys_are_not_used() {
    let idp = TestIdp::start().await;
    idp.publish_raw(SigningKey::rsa("weak", 1024));
    let v = verifier(&idp, "");
    let weak = idp.key_by_kid("weak");
    let token = weak.sign_raw(
        &json!({"alg": "RS256", "kid": "weak"}),
        &idp.claims("u", AUD),
    );
    assert_eq!(reject(&v, &token).await, R::UnknownKey);
}

#[tokio::test]
async fn eddsa_and_es256_tokens_verify_and_keys_cannot_cross_families() {
    let idp = TestIdp::start_with(vec![
        SigningKey::generate("ed-1", Algorithm::EdDSA),
        SigningKey::generate("ec-1", Algorithm::ES256),
    ])
    .await;
    let v = verifier(&idp, "");
    let claims = idp.claims("u", AUD);
    for kid in ["ed-1", "ec-1"] {
        let key = idp.key_by_kid(kid);
        assert!(
            v.verify_token(&key.sign_raw(&idp.header(&key), &claims))
                .await
                .is_ok(),
            "{kid}"
        );
    }
    let ec = idp.key_by_kid("ec-1");
    let crossed = ec.sign_raw(&json!({"alg": "ES256", "kid": "ed-1"}), &claims);
    assert_eq!(reject(&v, &crossed).await, R::UnknownKey);
}

#[test]
fn j27_clock_skew_follows_the_leeway() {
    let text = r#"
        [[identity.oidc]]
        name = "corp"
        issuer = "https://idp.example"
        audience = "gatehouse"
        leeway = "30s"
    "#;
    let issuer = Config::parse(text, std::path::Path::new("/"))
        .unwrap()
        .identity
        .oidc[0]
        .clone();
    let t = 1_800_000_000u64;
    let claims = json!({"iss": "https://idp.example", "sub": "u", "aud": "gatehouse",
                        "iat": t, "exp": t + 300});
    let claims = claims.as_object().unwrap();
    let check = |now| gatehouse_oidc::verify::check_claims(claims, &issuer, now);
    assert!(check(t).is_ok());
    assert_eq!(check(t - 29), Ok(()), "gateway 29 s behind: within leeway");
    assert_eq!(check(t - 300), Err(R::NotYetValid), "gateway 5 min behind");
    assert_eq!(
        check(t + 329),
        Ok(()),
        "gateway 29 s past exp: within leeway"
    );
    assert_eq!(check(t + 300 + 300), Err(R::Expired), "gateway 5 min ahead");
}
