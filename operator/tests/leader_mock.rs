//! Leader election against a mocked API server: a missing Lease is created (a create, so a
//! racing replica gets 409), leadership is reported, and on shutdown the Lease is released
//! with a resourceVersion-guarded server-side apply. Mocked only: no real API server.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use wgmesh_operator::leader::{spawn, LeaderConfig};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/wgmesh-system/leases";

async fn body(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[tokio::test]
async fn creates_a_missing_lease_leads_and_releases_on_shutdown() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let api: Api<Lease> = Api::namespaced(client, "wgmesh-system");
    let mut cfg = LeaderConfig::new("wgmesh-operator", "wgmesh-system", "op-0");
    cfg.retry_period = Duration::from_secs(60); // one round only, then shutdown
    let token = CancellationToken::new();
    let (mut leadership, task) = spawn(api, cfg, token.clone());
    assert!(!leadership.is_leader());

    let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await
    else {
        panic!("no GET")
    };
    assert_eq!(
        (req.method(), req.uri().to_string()),
        (&Method::GET, format!("{LEASE}/wgmesh-operator"))
    );
    let mut not_found = Response::new(Body::from(
        serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}))
            .unwrap_or_default(),
    ));
    *not_found.status_mut() = StatusCode::NOT_FOUND;
    send.send_response(not_found);

    let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await
    else {
        panic!("no create")
    };
    assert_eq!(
        (req.method(), req.uri().to_string()),
        (&Method::POST, format!("{LEASE}?"))
    );
    let mut created = body(req).await;
    assert_eq!(created["spec"]["holderIdentity"], json!("op-0"));
    assert_eq!(created["spec"]["leaseDurationSeconds"], json!(15));
    created["metadata"]["resourceVersion"] = json!("7");
    send.send_response(Response::new(Body::from(
        serde_json::to_vec(&created).unwrap_or_default(),
    )));

    tokio::time::timeout(Duration::from_secs(5), leadership.changed())
        .await
        .ok();
    assert!(leadership.is_leader());

    token.cancel();
    let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await
    else {
        panic!("no release")
    };
    assert_eq!(req.method(), Method::PATCH);
    assert_eq!(
        req.uri().to_string(),
        format!("{LEASE}/wgmesh-operator?&force=true&fieldManager=wgmesh-operator")
    );
    let released = body(req).await;
    assert_eq!(
        released["metadata"]["resourceVersion"],
        json!("7"),
        "guarded by resourceVersion"
    );
    assert_eq!(released["spec"]["holderIdentity"], json!(""));
    send.send_response(Response::new(Body::from(
        serde_json::to_vec(&released).unwrap_or_default(),
    )));
    assert!(tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .is_ok());
    assert!(!leadership.is_leader());
}
