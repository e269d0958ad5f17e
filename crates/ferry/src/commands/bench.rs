//! `ferry bench`: runs the benchmark tool of `ferry-bench`.

use ferry_bench::{BenchArgs, BenchError};

use super::{CliError, CliResult};

/// Runs the benchmark; an invalid workload is a usage error.
pub async fn run(args: BenchArgs) -> CliResult {
    match ferry_bench::run_cli(args).await {
        Ok(()) => Ok(()),
        Err(e @ (BenchError::Workload(_) | BenchError::WorkloadFile { .. })) => {
            Err(CliError::Usage(e.to_string()))
        }
        Err(e) => Err(CliError::Bench(e)),
    }
}
