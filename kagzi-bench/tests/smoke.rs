//! A smoke run of both benchmarks with tiny sizes against SQLite: they complete and report
//! sane numbers. Not a timed test.

use kagzi_bench::{Measured, Options, Workload, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_completes_every_run_and_reports_throughput() -> anyhow::Result<()> {
    let mut options = Options::new(Workload::W1);
    options.workflows = Some(20);
    options.concurrency = 5;
    options.payload_bytes = 16;
    let report = run(&options).await?;
    assert!(matches!(report.measured, Measured::Throughput { wall } if !wall.is_zero()));
    let line = report.json();
    assert_eq!(line["workload"], "w1");
    assert_eq!(line["db"], "sqlite");
    assert_eq!(line["workflows"], 20);
    assert_eq!(line["steps"], 3);
    assert!(line["wf_per_s"].as_f64().is_some_and(|x| x > 0.0), "{line}");
    assert!(
        line["steps_per_s"].as_f64().is_some_and(|x| x > 0.0),
        "{line}"
    );
    assert!(report.table().contains("workflows/s"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w2_completes_every_run_and_reports_latency() -> anyhow::Result<()> {
    let mut options = Options::new(Workload::W2);
    options.workflows = Some(10);
    let report = run(&options).await?;
    let line = report.json();
    assert_eq!(line["workload"], "w2");
    let p50 = line["p50_ms"].as_f64().unwrap_or(-1.0);
    let p99 = line["p99_ms"].as_f64().unwrap_or(-1.0);
    assert!(p50 > 0.0 && p99 >= p50, "{line}");
    Ok(())
}
