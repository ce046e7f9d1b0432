//! The claim, proved on the deployed shape (the world and its phases are in
//! tests/e2e/src/aws_path.rs): no readable lead may be lost or doubled; the DLQ may hold
//! only what the sandbox made permanently unreadable, each with its reason; every stored
//! lead is one `Lead Received` event; and no log line may carry a lead's contents or a
//! secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_e2e::aws_path::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn no_lead_is_lost_or_doubled_on_the_aws_path() {
    let mut world = World::build().await;
    world.refuses_every_bypass().await;
    let mapping = world.mapping();
    world.phase("set-up");
    world.meta_delivers().await;
    world.phase("posts");
    world.drain(mapping).await;
    world.backfill_ticks().await;
    world.phase("drain and backfill");
    world.check_stored().await;
    world.check_dead_letters().await;
    world.phase("checks");
    world.leads_out().await;
    world.phase("leads out");
    world.record_calls();
    world.check_logs().await;
    world.report();
}
