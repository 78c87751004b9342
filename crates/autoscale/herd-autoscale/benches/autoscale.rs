//! `cargo bench -p herd-autoscale`: prints the autoscale benchmark numbers against the goals.

use herd_autoscale::bench;

fn main() {
    let round = bench::bench_evaluation(100, 10, 1000);
    println!("evaluation round, 100 settings x 10 rules (5 out/in pairs) x 1000 instances: {round:?} (goal < 50ms)");
    let worst = bench::bench_evaluation_distinct_metrics(100, 10, 1000);
    println!("evaluation round, 100 settings x 10 rules on 10 distinct metrics x 1000 instances: {worst:?}");
    let sim = bench::bench_simulate_24h();
    println!("simulate 24 h at 1-minute grain: {sim:?} (goal < 1s)");
}
