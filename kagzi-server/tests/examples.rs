//! The fan-out and saga examples, built by `cargo test`, run against a real server process on
//! each store, and print what their doc comments promise.

mod support;

use support::{ServerProcess, TestDb};

async fn the_fanout_example_fans_out_to_children_and_back_in(db: TestDb) {
    let server = ServerProcess::start(&db.url(), support::free_port()).await;
    let stdout = support::run_example("fanout", &server.url).await;
    assert!(
        stdout.contains("3 documents, 13 words (longest 7, shortest 2)"),
        "example printed: {stdout}"
    );
}

async fn the_saga_example_compensates_in_reverse_order(db: TestDb) {
    let server = ServerProcess::start(&db.url(), support::free_port()).await;
    let stdout = support::run_example("saga", &server.url).await;
    assert!(stdout.contains("not booked"), "example printed: {stdout}");
    assert!(
        stdout.contains("compensated: cancelled reserve_hotel, cancelled reserve_flight"),
        "the hotel is undone before the flight: {stdout}"
    );
    assert!(
        stdout.contains(
            "journal: reserve_flight → reserve_hotel → charge_card → undo_reserve_hotel → undo_reserve_flight"
        ),
        "every compensation is a recorded step: {stdout}"
    );
}

both_stores!(
    the_fanout_example_fans_out_to_children_and_back_in,
    the_saga_example_compensates_in_reverse_order,
);
