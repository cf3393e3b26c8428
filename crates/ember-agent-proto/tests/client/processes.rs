//! The background-process calls against an agent that does not know them (the reference agent,
//! like the probe guest): Unsupported, and the connection stays usable.

use crate::common::Fixture;
use ember_agent_proto::test_agent::Fault;
use ember_agent_proto::{ClientError, Kind, ProcessStart};

#[test]
fn an_agent_without_processes_answers_unsupported_and_keeps_serving() {
    let fx = Fixture::new(Fault::None);
    let mut client = fx.connect();
    let unsupported = |e: ClientError, kind: Kind| match e {
        ClientError::Unsupported { request } => assert_eq!(request, kind),
        other => panic!("expected Unsupported, got {other}"),
    };
    unsupported(
        client
            .process_start(&ProcessStart::new(&["sleep", "1"]))
            .unwrap_err(),
        Kind::ProcessStart,
    );
    unsupported(
        client
            .process_start_attached(&ProcessStart::new(&["sleep", "1"]))
            .unwrap_err(),
        Kind::ProcessStart,
    );
    unsupported(client.process_attach(1).unwrap_err(), Kind::ProcessAttach);
    unsupported(
        client.process_input(1, b"x", true).unwrap_err(),
        Kind::ProcessInput,
    );
    unsupported(
        client.process_signal(1, 15, true).unwrap_err(),
        Kind::ProcessSignal,
    );
    unsupported(client.process_list().unwrap_err(), Kind::ProcessList);
    assert!(client.poisoned().is_none());
    client.ping().unwrap();
    assert_eq!(
        client
            .exec(&ember_agent_proto::Exec::new(&["echo", "ok"]))
            .unwrap()
            .stdout,
        b"ok\n"
    );
}
