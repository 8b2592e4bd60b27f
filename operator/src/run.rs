//! Wiring of `wgmesh-operator run`: logging, client, HTTP probes, leader election, controller,
//! and an orderly shutdown (stop writing, release the Lease, stop serving).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use wgmesh_api::constants::LEADER_LEASE_NAME;
use wgmesh_api::MeshConfig;

use crate::cli::RunArgs;
use crate::http::{serve, Probes};
use crate::leader::{self, LeaderConfig, Leadership};
use crate::metrics::Metrics;
use crate::reconcile::Context;
use crate::{controller, shutdown};

/// Structured logs: JSON by default, level from RUST_LOG (default info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone())?;

    let client = Client::try_default()
        .await
        .context("no Kubernetes API config (neither in-cluster nor KUBECONFIG)")?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let probes = Probes {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    // SIGTERM stops the controller; the Lease and HTTP each have their own token, cancelled
    // only after the controller returned: writes stop, then the Lease goes, then HTTP
    let (lease_token, http_token) = (CancellationToken::new(), CancellationToken::new());
    let http = tokio::spawn(serve(args.listen, probes, http_token.clone()));

    let (leadership, elector) = if args.leader_election {
        let cfg = LeaderConfig::new(LEADER_LEASE_NAME, &args.lease_namespace, &args.identity);
        let api: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
        let (l, h) = leader::spawn(api, cfg, lease_token.clone());
        (l, Some(h))
    } else {
        tracing::warn!("leader election disabled: run exactly one replica");
        (Leadership::always(), None)
    };

    let mesh = MeshConfig {
        cluster_cidrs: args.cluster_cidrs.clone(),
    };
    let ctx = Context::new(client.clone(), mesh, metrics, Some(args.identity.clone()));
    tracing::info!(identity = %args.identity, cluster_cidrs = ?args.cluster_cidrs, "starting");
    let result = controller::run(client, ctx, leadership, ready, token.clone()).await;

    // the controller returned (shutdown or fatal error), so no write is in flight any more
    token.cancel();
    lease_token.cancel();
    if let Some(h) = elector {
        if tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .is_err()
        {
            tracing::warn!("lease release timed out");
        }
    }
    http_token.cancel();
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "http server failed"),
        Err(e) => tracing::warn!(error = %e, "http task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("stopped");
    result
}
