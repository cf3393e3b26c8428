//! Bad input on every route of a real daemon: malformed JSON, wrong types, unknown fields,
//! unknown ids, invalid names, labels and env, out-of-range numbers, oversized bodies, wrong
//! content types, unknown routes and methods. Each gets a 4xx in the API's `{code, message}`
//! shape whose message names the problem — and afterwards every stored record is exactly as it
//! was (same rows, same revisions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Daemon, create, fill_pool, probe_template, runtime};
use ember_core::{PoolSpec, Sandbox, SnapshotInfo, Template, VmRecord};
use ember_test_support::{ApiClient, HttpResponse};

/// Every stored record as (kind, key, revision).
fn stored(d: &Daemon) -> Vec<(String, String, u64)> {
    let store = d.store();
    let mut rows = Vec::new();
    macro_rules! rows_of {
        ($t:ty, $kind:literal) => {
            for r in store.list::<$t>().unwrap() {
                rows.push((
                    $kind.to_string(),
                    ember_store::Record::key(&r.record),
                    r.revision,
                ));
            }
        };
    }
    rows_of!(Template, "template");
    rows_of!(SnapshotInfo, "snapshot");
    rows_of!(PoolSpec, "pool");
    rows_of!(Sandbox, "sandbox");
    rows_of!(VmRecord, "vm");
    rows.sort();
    rows
}

fn check(r: &HttpResponse, status: u16, needle: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", r.body));
    let code = v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no code: {v}"));
    assert!(!code.is_empty());
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{what}: the message should name {needle:?}: {message}"
    );
}

#[test]
fn every_route_refuses_bad_input_and_changes_nothing() {
    let mut d = Daemon::new();
    d.extra = vec!["--max-file-bytes".into(), "1000".into()];
    d.start();
    let rt = runtime();
    let id = rt.block_on(async {
        let c = d.client();
        c.build_template(&probe_template("probe")).await.unwrap();
        fill_pool(&c, "probe", 2).await;
        let mut req = create("probe");
        req.labels.insert("team".into(), "a".into());
        c.create_sandbox(&req).await.unwrap().id.to_string()
    });
    // Let the pool settle (its refills write records too).
    std::thread::sleep(Duration::from_millis(300));
    let before = stored(&d);
    let mut api = ApiClient::connect(&d.socket(), Duration::from_secs(10));
    let mut post = |path: &str, body: &str| api.request("POST", path, Some(body));

    // Templates.
    check(&post("/v1/templates", "{"), 400, "EOF", "truncated JSON");
    check(
        &post("/v1/templates", "[]"),
        400,
        "the body",
        "not an object",
    );
    check(
        &post("/v1/templates", r#"{"name": 5}"#),
        400,
        "name",
        "wrong type",
    );
    check(
        &post("/v1/templates", r#"{"name":"x","color":"red"}"#),
        400,
        "color",
        "unknown field",
    );
    check(
        &post("/v1/templates", r#"{"name":"a/b"}"#),
        400,
        "name",
        "bad name",
    );
    check(
        &post(
            "/v1/templates",
            r#"{"name":"x","spec":{"guest":{"kind":"probe"},"vcpu_count":0}}"#,
        ),
        400,
        "vcpu_count",
        "zero vCPUs",
    );
    check(
        &post(
            "/v1/templates",
            r#"{"name":"x","spec":{"guest":{"kind":"kernel","kernel":"rel/path"}}}"#,
        ),
        400,
        "spec.guest.kernel",
        "relative kernel path",
    );
    check(
        &post(
            "/v1/templates",
            r#"{"name":"x","spec":{"guest":{"kind":"image","source":{"kind":"debootstrap","packages":["bash","no such"]}}}}"#,
        ),
        400,
        "spec.guest.source.packages",
        "a package name with a space",
    );
    check(
        &post(
            "/v1/templates",
            r#"{"name":"x","spec":{"guest":{"kind":"image","source":{"kind":"tar","path":"x.tar"}}}}"#,
        ),
        400,
        "spec.guest.source.path",
        "a relative image tarball",
    );
    check(
        &post(
            "/v1/templates",
            r#"{"name":"x","spec":{"guest":{"kind":"image","source":{"kind":"docker","image":"x"}}}}"#,
        ),
        400,
        "docker",
        "an unknown image source kind",
    );
    check(
        &post("/v1/templates", r#"{"name":"probe"}"#),
        409,
        "already exists",
        "duplicate",
    );
    check(&post("/v1/templates", ""), 400, "empty", "empty body");

    // Pools.
    let mut put = |path: &str, body: &str| api.request("PUT", path, Some(body));
    check(
        &put("/v1/pools/nope", r#"{"min_depth":1}"#),
        404,
        "nope",
        "unknown template",
    );
    check(
        &put("/v1/pools/probe", r#"{"min_depth":5,"max_depth":2}"#),
        400,
        "min_depth",
        "min > max",
    );
    check(
        &put("/v1/pools/probe", r#"{"min_depth":-1}"#),
        400,
        "min_depth",
        "negative depth",
    );
    check(
        &put("/v1/pools/probe", r#"{"min_depth":1,"pooled":"asleep"}"#),
        400,
        "pooled",
        "bad pooled",
    );
    check(
        &put("/v1/pools/probe", r#"{"min_depth":1,"max_age_secs":0}"#),
        400,
        "max_age_secs",
        "zero age",
    );
    check(
        &put("/v1/pools/b%20d", r#"{"min_depth":1}"#),
        400,
        "b d",
        "bad template name",
    );
    check(
        &api.request("DELETE", "/v1/pools/nope", None),
        404,
        "nope",
        "delete unknown pool",
    );
    check(
        &api.request("DELETE", "/v1/templates/probe", None),
        409,
        "in use",
        "template in use",
    );
    check(
        &api.request("GET", "/v1/templates/nope", None),
        404,
        "nope",
        "unknown template",
    );

    // Sandboxes.
    let mut post = |path: &str, body: &str| api.request("POST", path, Some(body));
    check(
        &post("/v1/sandboxes", r#"{"template":"nope"}"#),
        404,
        "nope",
        "unknown template",
    );
    check(
        &post(
            "/v1/sandboxes",
            r#"{"template":"probe","labels":{"bad key":"x"}}"#,
        ),
        400,
        "bad key",
        "bad label key",
    );
    check(
        &post("/v1/sandboxes", r#"{"template":"probe","labels":{"k":5}}"#),
        400,
        "labels",
        "label of wrong type",
    );
    check(
        &post("/v1/sandboxes", r#"{"template":"probe","env":{"1X":"y"}}"#),
        400,
        "1X",
        "bad env name",
    );
    check(
        &post("/v1/sandboxes", r#"{"template":"probe","timeout_secs":0}"#),
        400,
        "timeout_secs",
        "zero timeout",
    );
    check(
        &post(
            "/v1/sandboxes",
            r#"{"template":"probe","timeout_secs":99999999999}"#,
        ),
        400,
        "timeout_secs",
        "huge timeout",
    );
    check(
        &post("/v1/sandboxes", r#"{"templ":"probe"}"#),
        400,
        "templ",
        "misspelt field",
    );
    let get = |api: &mut ApiClient, path: &str| api.request("GET", path, None);
    check(
        &get(&mut api, "/v1/sandboxes?state=bogus"),
        400,
        "bogus",
        "bad state",
    );
    check(
        &get(&mut api, "/v1/sandboxes?limit=0"),
        400,
        "limit",
        "zero limit",
    );
    check(
        &get(&mut api, "/v1/sandboxes?limit=x"),
        400,
        "limit",
        "non-numeric limit",
    );
    check(
        &get(&mut api, "/v1/sandboxes?cursor=zz"),
        400,
        "cursor",
        "garbage cursor",
    );
    check(
        &get(&mut api, "/v1/sandboxes?label=nokey"),
        400,
        "label",
        "label without =",
    );
    check(
        &get(&mut api, "/v1/sandboxes?colour=red"),
        400,
        "colour",
        "unknown parameter",
    );
    check(
        &get(&mut api, "/v1/sandboxes?template=a/b"),
        400,
        "a/b",
        "bad template filter",
    );
    check(
        &get(&mut api, "/v1/sandboxes/sb-0000000000000000"),
        404,
        "sb-0000000000000000",
        "unknown sandbox",
    );
    check(
        &get(&mut api, "/v1/sandboxes/bad%20id"),
        400,
        "bad id",
        "bad sandbox id",
    );
    let mut post = |path: &str, body: &str| api.request("POST", path, Some(body));
    let exec = format!("/v1/sandboxes/{id}/exec");
    check(&post(&exec, r#"{"argv":[]}"#), 400, "argv", "empty argv");
    check(
        &post(&exec, r#"{"argv":"echo"}"#),
        400,
        "argv",
        "argv of wrong type",
    );
    check(
        &post(&exec, r#"{"argv":["echo"],"timeout_ms":0}"#),
        400,
        "timeout_ms",
        "zero exec timeout",
    );
    check(
        &post(&exec, r#"{"argv":["echo"],"cwd":"/nonexistent"}"#),
        404,
        "/nonexistent",
        "a missing cwd",
    );
    check(
        &post(
            &exec,
            r#"{"argv":["echo"],"stdin":"a","stdin_base64":"YQ=="}"#,
        ),
        400,
        "stdin",
        "both stdins",
    );
    check(
        &post(&exec, r#"{"argv":["echo"],"stdin_base64":"!!"}"#),
        400,
        "stdin_base64",
        "bad base64",
    );
    check(
        &post(&exec, r#"{"argv":["echo"],"env":{"A B":"x"}}"#),
        400,
        "A B",
        "bad exec env",
    );
    check(
        &post(
            "/v1/sandboxes/sb-0000000000000000/exec",
            r#"{"argv":["echo"]}"#,
        ),
        404,
        "sb-0000000000000000",
        "exec in unknown sandbox",
    );
    check(
        &post(
            &format!("/v1/sandboxes/{id}/timeout"),
            r#"{"timeout_secs":0}"#,
        ),
        400,
        "timeout_secs",
        "zero new timeout",
    );
    // Resuming a running sandbox is not an error, and changes nothing.
    assert_eq!(post(&format!("/v1/sandboxes/{id}/resume"), "").status, 200);
    let files = format!("/v1/sandboxes/{id}/files");
    check(&api.request("GET", &files, None), 400, "path", "no path");
    check(
        &api.request("GET", &format!("{files}?path=/x&path=/y"), None),
        400,
        "path",
        "two paths",
    );
    let big = "x".repeat(2000);
    let r = common::send_raw_tolerant(
        &d.socket(),
        format!(
            "PUT {files}?path=/big HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    );
    check(&r, 413, "1000", "file over the limit");
    // A refused body may close the connection: each raw request gets its own.
    let mut api = ApiClient::connect(&d.socket(), Duration::from_secs(10));
    let r = api.send_raw(
        format!("PUT {files}?path=/m&mode=999 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
            .as_bytes(),
    );
    check(&r, 400, "mode", "bad mode");

    // Raw VMs and snapshots.
    let mut api = ApiClient::connect(&d.socket(), Duration::from_secs(10));
    let mut post = |path: &str, body: &str| api.request("POST", path, Some(body));
    check(
        &post("/v1/vms", r#"{"id":"v1","spec":{"vcpu_count":0}}"#),
        400,
        "vcpu_count",
        "zero vCPUs",
    );
    check(
        &post("/v1/vms", r#"{"id":"v 1","spec":{}}"#),
        400,
        "id",
        "bad VM id",
    );
    check(
        &post(&format!("/v1/vms/{id}/pause"), ""),
        409,
        "sandbox",
        "pause a sandbox's VM raw",
    );
    check(
        &api.request("DELETE", &format!("/v1/vms/{id}"), None),
        409,
        "sandbox",
        "destroy a sandbox's VM raw",
    );
    check(
        &api.request("DELETE", "/v1/vms/nope", None),
        404,
        "nope",
        "destroy unknown VM",
    );
    check(
        &api.request("DELETE", "/v1/snapshots/nope", None),
        404,
        "nope",
        "unknown snapshot",
    );
    let tpl_snap = d.store().list::<SnapshotInfo>().unwrap()[0]
        .record
        .snapshot_id
        .to_string();
    check(
        &api.request("DELETE", &format!("/v1/snapshots/{tpl_snap}"), None),
        409,
        "template probe",
        "a template's snapshot",
    );

    // Content types, sizes, routes, methods.
    let r = api.send_raw(
        b"POST /v1/sandboxes HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
    );
    check(&r, 415, "JSON", "text body");
    let huge = format!(
        r#"{{"template":"probe","labels":{{"k":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let r = common::send_raw_tolerant(
        &d.socket(),
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{huge}",
            huge.len()
        )
        .as_bytes(),
    );
    check(&r, 413, "bytes", "oversized JSON");
    let mut api = ApiClient::connect(&d.socket(), Duration::from_secs(10));
    check(
        &api.request("GET", "/v1/nothing", None),
        404,
        "/v1/nothing",
        "unknown route",
    );
    check(
        &api.request("PATCH", "/v1/templates", None),
        405,
        "PATCH",
        "wrong method",
    );

    let after = stored(&d);
    assert_eq!(before, after, "bad requests changed stored records");
    assert!(d.store().integrity_check().unwrap().is_empty());
    // And the daemon still serves that sandbox.
    rt.block_on(async {
        let (code, out) = common::run(&d.client(), &id, &["echo", "still", "here"])
            .await
            .unwrap();
        assert_eq!((code, out.as_str()), (0, "still here\n"));
    });
}
