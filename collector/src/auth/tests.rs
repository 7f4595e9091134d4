use super::*;

fn row(token: &str, agent: &str, member: &str, revoked: bool) -> TokenRow {
    TokenRow {
        agent: agent.into(),
        member: member.into(),
        token_sha256: hash_token(token),
        revoked,
        ha_cluster: None,
    }
}

fn table() -> TokenTable {
    let t = TokenTable::new();
    t.replace(vec![
        row("tok-a1", "a1", "leap", false),
        row("tok-a2", "a2", "2i2c", false),
        row("tok-old", "a3", "leap", true),
    ]);
    t
}

fn cred(agent: &str, member: &str) -> Credential {
    Credential {
        agent: agent.into(),
        member: member.into(),
        ha_cluster: None,
    }
}

#[test]
fn bearer_tokens_map_to_their_agent_and_member() {
    let t = table();
    let anon = PeerIdentity::Anonymous;
    assert_eq!(
        t.authenticate(Some("tok-a1"), &anon),
        Ok(cred("a1", "leap"))
    );
    assert_eq!(
        t.authenticate(Some("tok-a2"), &anon),
        Ok(cred("a2", "2i2c"))
    );
    assert_eq!(t.authenticate(None, &anon), Err(AuthError::Missing));
    assert_eq!(t.authenticate(Some("nope"), &anon), Err(AuthError::Unknown));
    assert_eq!(
        t.authenticate(Some("tok-old"), &anon),
        Err(AuthError::Revoked)
    );
    assert_eq!(t.live_count(), 2);
}

#[test]
fn replace_applies_revocation_and_new_tokens() {
    let t = table();
    t.replace(vec![
        row("tok-a1", "a1", "leap", true),
        row("tok-new", "a4", "leap", false),
    ]);
    let anon = PeerIdentity::Anonymous;
    assert_eq!(
        t.authenticate(Some("tok-a1"), &anon),
        Err(AuthError::Revoked)
    );
    assert_eq!(
        t.authenticate(Some("tok-a2"), &anon),
        Err(AuthError::Unknown)
    );
    assert_eq!(
        t.authenticate(Some("tok-new"), &anon),
        Ok(cred("a4", "leap"))
    );
}

#[test]
fn certificate_names_the_agent_and_a_token_must_match_it() {
    let t = table();
    let a1 = PeerIdentity::Agent("a1".into());
    assert_eq!(t.authenticate(Some("tok-a1"), &a1), Ok(cred("a1", "leap")));
    // Without a token, the live token row gives the member.
    assert_eq!(t.authenticate(None, &a1), Ok(cred("a1", "leap")));
    assert_eq!(
        t.authenticate(Some("tok-a2"), &a1),
        Err(AuthError::AgentMismatch {
            certificate_agent: "a1".into(),
            token_agent: "a2".into(),
            token_member: "2i2c".into(),
        })
    );
    // An agent whose only token is revoked has no member.
    let a3 = PeerIdentity::Agent("a3".into());
    assert!(matches!(
        t.authenticate(None, &a3),
        Err(AuthError::Certificate(_))
    ));
    assert!(matches!(
        t.authenticate(None, &PeerIdentity::Unnamed),
        Err(AuthError::Certificate(_))
    ));
}

#[test]
fn bearer_header_parsing() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer_token(&h), Ok(None));
    h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
    assert_eq!(bearer_token(&h), Ok(Some("abc")));
    h.insert(
        http::header::AUTHORIZATION,
        "bearer   abc ".parse().unwrap(),
    );
    assert_eq!(bearer_token(&h), Ok(Some("abc")));
    h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
    assert_eq!(bearer_token(&h), Err(BearerError::Malformed));
    h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
    assert_eq!(bearer_token(&h), Err(BearerError::Malformed));
}

#[test]
fn fingerprint_is_four_hex_chars_of_the_hash_not_the_token() {
    let f = token_fingerprint("secret-token");
    assert_eq!(f.len(), 4);
    assert_eq!(f, hex::encode(&hash_token("secret-token")[..2]));
    assert!(!"secret-token".contains(&f));
}

#[test]
fn certificate_agent_is_first_dns_san_else_cn() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["agent-7".to_string(), "other".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cn-name");
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(agent_from_certificate(cert.der()), Some("agent-7".into()));

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cn-agent");
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(agent_from_certificate(cert.der()), Some("cn-agent".into()));

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(agent_from_certificate(cert.der()), None);
    assert_eq!(agent_from_certificate(b"not a certificate"), None);
}

#[test]
fn the_ha_cluster_comes_from_the_token_row() {
    let t = TokenTable::new();
    t.replace(vec![
        TokenRow {
            ha_cluster: Some("leap-prod".into()),
            ..row("tok-a", "leap-a", "leap", false)
        },
        row("tok-c", "leap-c", "leap", false),
    ]);
    let anon = PeerIdentity::Anonymous;
    let got = t.authenticate(Some("tok-a"), &anon).expect("known");
    assert_eq!(got.ha_cluster.as_deref(), Some("leap-prod"));
    let got = t
        .authenticate(None, &PeerIdentity::Agent("leap-a".into()))
        .expect("known by certificate");
    assert_eq!(got.ha_cluster.as_deref(), Some("leap-prod"));
    assert_eq!(
        t.authenticate(Some("tok-c"), &anon)
            .expect("known")
            .ha_cluster,
        None
    );
    assert_eq!(
        t.ha_clusters(),
        HashMap::from([("leap-a".to_string(), "leap-prod".to_string())])
    );
}
