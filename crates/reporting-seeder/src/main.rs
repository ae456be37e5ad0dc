//! `reporting-seeder`: keeps a shared PostgreSQL's reporting materialized views up to date.

fn main() -> std::process::ExitCode {
    reporting_seeder::cli::main()
}
