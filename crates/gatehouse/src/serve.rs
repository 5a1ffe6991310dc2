//! `gatehouse serve`: brings the gateway up on its embedded store.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gatehouse_api::ApiState;
use gatehouse_core::auth::Authenticator;
use gatehouse_core::config::Config;
use gatehouse_core::fsutil;
use gatehouse_core::identity::ADMIN_GROUP;
use gatehouse_core::pipeline::Pipeline;
use gatehouse_core::recorder::Recorder;
use gatehouse_core::reviews::Reviews;
use gatehouse_core::store::Store;
use gatehouse_postgres::PgContext;
use tokio::net::TcpListener;

/// The file holding the bootstrap admin token, inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The file naming the addresses the gateway listens on, written once it listens.
pub const LISTEN_FILE: &str = "listen.json";

pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let data_dir = &config.server.data_dir;
    fsutil::create_private_dir(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    // A stale file from an earlier run must not point tools at the wrong ports.
    let _ = std::fs::remove_file(data_dir.join(LISTEN_FILE));

    let store = Store::open(&config.store.url)
        .await
        .with_context(|| format!("cannot open the store at {}", config.store.url))?;
    let mut auth = Authenticator::new(store.clone());
    if !config.identity.oidc.is_empty() {
        let oidc = gatehouse_oidc::OidcVerifier::new(&config.identity.oidc)
            .context("cannot set up the OIDC issuers")?;
        oidc.warm();
        auth = auth.with_federation(Arc::new(oidc));
    }
    ensure_admin_token(&auth, data_dir).await?;

    let tls = gatehouse_core::tls::server_config(
        config.server.tls_cert.as_deref(),
        config.server.tls_key.as_deref(),
        data_dir,
        &[gatehouse_postgres::session::ALPN_POSTGRESQL],
    )
    .context("cannot set up TLS")?;

    let policies = crate::policy::load(&config)?;
    if policies.source == gatehouse_policy::PolicySource::Default {
        tracing::warn!(
            "no policy files configured: only members of group \"admin\" may connect or run anything"
        );
    }
    let engine = Arc::new(gatehouse_policy::PolicyEngine::new(policies));
    let policy_engine = engine.clone();
    let grants = Arc::new(
        gatehouse_core::grants::GrantBook::load(store.clone())
            .await
            .context("cannot load the grants in force")?,
    );
    tokio::spawn(refresh_grants(grants.clone()));
    let authorizer = Arc::new(gatehouse_policy::PolicyAuthorizer {
        engine,
        grants: grants.clone(),
    });

    let (recorder, _writer) = Recorder::start(store.clone());
    let audit = gatehouse_audit::AuditLog::open_with(
        &data_dir.join(crate::audit::AUDIT_DIR),
        config.audit.durability,
        config.audit.checkpoint_every,
        config.audit.writes,
    )
    .await
    .context("cannot open the audit log")?;
    audit
        .append(gatehouse_audit::Event::new(
            "gateway.started",
            None,
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": config.source.as_ref().map(|p| p.display().to_string()),
                "connections": config.connections.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            }),
        ))
        .await
        .context("cannot write the audit log")?;
    tokio::spawn(crate::policy::watch(
        config.clone(),
        policy_engine,
        audit.clone(),
    ));
    let reviews = Arc::new(Reviews::new(
        store.clone(),
        config.reviews.timeout,
        grants,
        audit.is_on().then(|| audit.clone()),
    ));
    // Held client connections do not survive a restart, so neither do their reviews.
    let abandoned = reviews.abandon_held(None, "the gateway restarted").await;
    if abandoned > 0 {
        tracing::info!(
            abandoned,
            "reviews of statements held before the restart are abandoned"
        );
    }
    let masking = Arc::new(gatehouse_core::masking::Masking::new(
        &config.masking,
        masking_key(&config)?,
    ));
    let pipeline = Arc::new(Pipeline::new(
        config.clone(),
        auth.clone(),
        recorder,
        authorizer,
        reviews.clone(),
        masking,
        audit.is_on().then(|| audit.clone()),
    ));

    let pg_listener = TcpListener::bind(config.server.postgres_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.postgres_listen)",
                config.server.postgres_listen
            )
        })?;
    let api_listener = TcpListener::bind(config.server.api_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.api_listen)",
                config.server.api_listen
            )
        })?;
    // Where the gateway really listens (a configured port 0 picks a free one), for tools.
    let listening = serde_json::json!({
        "postgres": pg_listener.local_addr()?.to_string(),
        "api": api_listener.local_addr()?.to_string(),
    });
    fsutil::write_private(
        &data_dir.join(LISTEN_FILE),
        format!("{listening}\n").as_bytes(),
    )
    .with_context(|| format!("cannot write {}", data_dir.join(LISTEN_FILE).display()))?;
    tracing::info!(
        postgres = %pg_listener.local_addr()?,
        api = %format!("http://{}", api_listener.local_addr()?),
        connections = config.connections.len(),
        "Gatehouse is ready"
    );
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    let pg = tokio::spawn(gatehouse_postgres::serve(
        pg_listener,
        Arc::new(PgContext::new(pipeline.clone(), tls)),
    ));
    let mut runners: std::collections::HashMap<_, Arc<dyn gatehouse_core::exec::CommandRunner>> =
        std::collections::HashMap::new();
    runners.insert(
        gatehouse_core::config::ConnectionKind::Postgres,
        Arc::new(gatehouse_postgres::oneshot::PgRunner {
            connect_timeout: config.server.upstream_connect_timeout,
            statement_timeout: config.server.exec_timeout,
        }),
    );
    let runners = Arc::new(runners);
    let extra = mcp_routes(&config, &pipeline, &reviews, &auth, &runners, &audit);
    let api = tokio::spawn(gatehouse_api::serve(
        api_listener,
        ApiState {
            config: config.clone(),
            store,
            auth,
            reviews,
            pipeline,
            runners,
            audit: audit.clone(),
        },
        extra,
    ));

    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        r = pg => anyhow::bail!("the PostgreSQL listener stopped: {r:?}"),
        r = api => anyhow::bail!("the API listener stopped: {r:?}"),
    }
    // Give the recorder a moment to commit what it has queued, then close the audit log
    // (a last signed checkpoint, and the file cut back to its last record).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    audit.close().await;
    Ok(())
}

type Runners = Arc<
    std::collections::HashMap<
        gatehouse_core::config::ConnectionKind,
        Arc<dyn gatehouse_core::exec::CommandRunner>,
    >,
>;

/// The MCP server at `/mcp`, when built with the `mcp` feature.
#[cfg(feature = "mcp")]
fn mcp_routes(
    config: &Arc<Config>,
    pipeline: &Arc<Pipeline>,
    reviews: &Arc<Reviews>,
    auth: &Authenticator,
    runners: &Runners,
    audit: &gatehouse_audit::AuditLog,
) -> axum::Router {
    gatehouse_mcp::router(gatehouse_mcp::McpState {
        config: config.clone(),
        pipeline: pipeline.clone(),
        reviews: reviews.clone(),
        auth: auth.clone(),
        runners: runners.clone(),
        audit: audit.clone(),
    })
}

#[cfg(not(feature = "mcp"))]
fn mcp_routes(
    _: &Arc<Config>,
    _: &Arc<Pipeline>,
    _: &Arc<Reviews>,
    _: &Authenticator,
    _: &Runners,
    _: &gatehouse_audit::AuditLog,
) -> axum::Router {
    axum::Router::new()
}

/// The key of the masking `token` strategy: `[masking] key`, else a random key kept in the data
/// directory (created on first start, mode 0600), so tokens stay stable across restarts.
fn masking_key(config: &Config) -> anyhow::Result<gatehouse_mask::TokenKey> {
    if let Some(key) = &config.masking.key {
        let secret = key.resolve().context("cannot read [masking] key")?;
        return Ok(gatehouse_mask::TokenKey::new(
            secret.expose().as_bytes().to_vec(),
        ));
    }
    let path = config.server.data_dir.join("masking.key");
    if let Ok(existing) = std::fs::read_to_string(&path)
        && existing.trim().len() >= 32
    {
        return Ok(gatehouse_mask::TokenKey::new(
            existing.trim().as_bytes().to_vec(),
        ));
    }
    let fresh = hex::encode(rand::random::<[u8; 32]>());
    fsutil::write_private(&path, format!("{fresh}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(gatehouse_mask::TokenKey::new(fresh.into_bytes()))
}

/// Re-reads the grants in force now and then: drops expired ones from memory and picks up
/// grants given or revoked through another replica sharing the store.
async fn refresh_grants(grants: Arc<gatehouse_core::grants::GrantBook>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        if let Err(e) = grants.refresh().await {
            tracing::warn!(error = %e, "cannot refresh the grants in force");
        }
    }
}

/// Creates the admin token on first start (or when the store no longer knows it).
async fn ensure_admin_token(auth: &Authenticator, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path)
        && auth
            .authenticate(existing.trim(), std::net::Ipv4Addr::LOCALHOST.into())
            .await
            .is_ok()
    {
        return Ok(());
    }
    let issued = auth
        .issue(
            "admin",
            vec![ADMIN_GROUP.to_string()],
            None,
            vec![],
            "gatehouse/bootstrap",
        )
        .await
        .context("cannot create the admin token")?;
    fsutil::write_private(&path, format!("{}\n", issued.value).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(file = %path.display(), "created the admin token (mode 0600)");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
