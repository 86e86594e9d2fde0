//! `jobmill`: a command-line client of the jobmill HTTP API (it talks HTTP only).
//!
//! # Layout
//! - `main`: the command tree (clap) and one function per command.
//! - [`Api`]: the HTTP client: bearer key, JSON, and API errors shown as `code: message` with a
//!   non-zero exit.
//! - `table`: plain-text tables; `--json` prints the API's answers as they are.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{json, Value};

/// Exit code of an API error (4xx/5xx answer).
const EXIT_API: u8 = 1;
/// Exit code of a failed, cancelled or unfinished job (`wait`, `submit --wait`).
const EXIT_JOB: u8 = 3;

#[derive(Parser)]
#[command(
    name = "jobmill",
    version,
    about = "Submit, watch and steer jobmill jobs, queues and workers"
)]
struct Cli {
    /// API base URL.
    #[arg(
        long,
        env = "JOBMILL_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key (bearer secret).
    #[arg(long, env = "JOBMILL_KEY", global = true, hide_env_values = true)]
    key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit a job.
    Submit {
        /// Job kind.
        kind: String,
        /// Arguments as JSON, or @file.
        #[arg(long)]
        args: Option<String>,
        /// Queue.
        #[arg(long)]
        queue: Option<String>,
        /// Priority 0-9.
        #[arg(long)]
        priority: Option<u8>,
        /// Run after this delay (500ms, 10s, 5m, 2h).
        #[arg(long, conflicts_with = "at")]
        delay: Option<String>,
        /// Run at this RFC 3339 time.
        #[arg(long)]
        at: Option<String>,
        /// Deduplication key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Limit key (`customer:42`): the queue's per-key limits count the job against it.
        #[arg(long)]
        limit_key: Option<String>,
        /// Wait for the job to finish; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Show a job.
    Get {
        /// Job id.
        id: String,
    },
    /// Wait for a job to finish, with a progress bar; exit 0 only if it succeeded.
    Wait {
        /// Job id.
        id: String,
    },
    /// List jobs, newest first.
    Ls {
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Retry a failed or cancelled job, or every job matching `--filter` (a bulk action:
    /// counted first, then confirmed, or `--yes`).
    Retry {
        /// Job id.
        #[arg(required_unless_present = "filter", conflicts_with = "filter")]
        id: Option<String>,
        /// Retry the jobs matching KEY=VALUE (repeatable; all must hold). Keys: state, kind,
        /// queue, owner, created_after, created_before (RFC 3339), error_contains, ids
        /// (comma-separated, at most 1,000).
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Only count the jobs the filter matches.
        #[arg(long, conflicts_with = "id")]
        dry_run: bool,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y', conflicts_with = "id")]
        yes: bool,
    },
    /// Queues: list (default), pause, resume, limits.
    Queues {
        #[command(subcommand)]
        action: Option<QueueCmd>,
    },
    /// Workers: list (default), quiet, stop.
    Workers {
        #[command(subcommand)]
        action: Option<WorkerCmd>,
    },
    /// Schedules: list (default), show, pause, resume, trigger.
    Schedules {
        #[command(subcommand)]
        action: Option<ScheduleCmd>,
    },
    /// Follow state changes across the fleet.
    Tail {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
    },
    /// The job kinds the API accepts.
    Kinds,
    /// Print shell completions.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queues.
    Ls,
    /// Pause a queue.
    Pause {
        /// Queue name.
        name: String,
    },
    /// Resume a queue.
    Resume {
        /// Queue name.
        name: String,
    },
    /// Show a queue's limits, or set them (replacing all) with flags, or remove them.
    Limits {
        /// Queue name.
        name: String,
        /// Jobs of the queue running at once, across the fleet.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Starts per window, as MAX/PER (`10/1s`).
        #[arg(long)]
        rate: Option<String>,
        /// Jobs of one limit key running at once.
        #[arg(long)]
        key_concurrency: Option<u32>,
        /// Starts of one limit key per window, as MAX/PER (`5/1s`).
        #[arg(long)]
        key_rate: Option<String>,
        /// Remove every limit of the queue.
        #[arg(long, conflicts_with_all = ["concurrency", "rate", "key_concurrency", "key_rate"])]
        clear: bool,
    },
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// List schedules.
    Ls,
    /// Show a schedule with its next fire times and last runs.
    Show {
        /// Schedule name.
        name: String,
        /// The schedule's tenant (operators and viewers; default: the key's own).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Pause a schedule (its ticks are skipped).
    Pause {
        /// Schedule name.
        name: String,
        /// The schedule's tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Resume a schedule from its next tick.
    Resume {
        /// Schedule name.
        name: String,
        /// The schedule's tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Run a schedule's job now.
    Trigger {
        /// Schedule name.
        name: String,
        /// The schedule's tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// The path of schedule `name` (of `tenant`, if given), with `suffix`.
fn schedule_path(name: &str, tenant: Option<&str>, suffix: &str) -> String {
    let q = tenant
        .map(|t| format!("?tenant={}", url_escape(t)))
        .unwrap_or_default();
    format!("/v1/schedules/{}{suffix}{q}", url_escape(name))
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Subcommand)]
enum WorkerCmd {
    /// List workers.
    Ls,
    /// Make a worker stop claiming.
    Quiet {
        /// Worker id.
        id: String,
    },
    /// Make a worker drain and exit.
    Stop {
        /// Worker id.
        id: String,
    },
}

/// An error answer of the API.
#[derive(Debug)]
struct ApiFailure {
    status: u16,
    code: String,
    message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// A job that ended other than `succeeded`.
#[derive(Debug)]
struct JobNotSucceeded(String);

impl std::fmt::Display for JobNotSucceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the job ended {}", self.0)
    }
}

impl std::error::Error for JobNotSucceeded {}

/// The HTTP client.
struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')));
        match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let res = req.send().await.context("reaching the API")?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.context("reading the answer")?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(ApiFailure {
                status,
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or("http_error")
                    .to_string(),
                message: body["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            }
            .into());
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::POST, path).json(&body))
            .await
    }
}

mod table {
    //! Plain-text tables with padded columns.

    use serde_json::Value;

    /// A cell's text.
    pub fn cell(v: &Value) -> String {
        match v {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// Print `rows` under `head`.
    pub fn print(head: &[&str], rows: &[Vec<String>]) {
        let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = width[i]))
                .collect();
            println!("{}", parts.join("  ").trim_end());
        };
        line(head.iter().map(|h| h.to_uppercase()).collect());
        for r in rows {
            line(r.clone());
        }
    }
}

fn print_jobs(jobs: &[Value]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            [
                "id",
                "kind",
                "queue",
                "state",
                "attempt",
                "owner",
                "created_at",
            ]
            .iter()
            .map(|f| table::cell(&j[*f]))
            .collect()
        })
        .collect();
    table::print(
        &[
            "id", "kind", "queue", "state", "attempt", "owner", "created",
        ],
        &rows,
    );
}

fn print_job(j: &Value) {
    for f in [
        "id",
        "kind",
        "queue",
        "state",
        "attempt",
        "max_attempts",
        "owner",
        "created_at",
        "started_at",
        "finished_at",
    ] {
        println!("{f:<13} {}", table::cell(&j[f]));
    }
    if !j["progress"].is_null() {
        println!("{:<13} {}", "progress", j["progress"]);
    }
    if !j["result"].is_null() {
        println!("{:<13} {}", "result", j["result"]);
    }
    if let Some(errs) = j["errors"].as_array() {
        for e in errs {
            println!(
                "{:<13} attempt {}: {}",
                "error",
                e["attempt"],
                table::cell(&e["message"])
            );
        }
    }
}

fn parse_delay_ms(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad delay '{s}'"))?;
    let factor = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(anyhow!("bad delay '{s}': use 500ms, 10s, 5m, 2h or 1d")),
    };
    Ok(n * factor)
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Long-poll until the job is terminal, drawing its progress.
async fn wait(api: &Api, id: &str, json_out: bool) -> anyhow::Result<Value> {
    let bar = indicatif::ProgressBar::hidden();
    if !json_out {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    loop {
        let j = api.get(&format!("/v1/jobs/{id}?wait=20")).await?;
        let state = j["state"].as_str().unwrap_or("").to_string();
        if let Some(done) = j["progress"]["done"].as_u64() {
            if let Some(total) = j["progress"]["total"].as_u64() {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
        bar.set_message(state.clone());
        if is_terminal(&state) {
            bar.finish_and_clear();
            return Ok(j);
        }
    }
}

fn finished(j: &Value, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!("{j}");
    } else {
        print_job(j);
    }
    match j["state"].as_str() {
        Some("succeeded") => Ok(()),
        other => Err(JobNotSucceeded(other.unwrap_or("?").to_string()).into()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Api {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?,
        base: cli.url.clone(),
        key: cli.key.clone(),
    };
    let json_out = cli.json;
    let show = |v: &Value, table: &dyn Fn(&Value)| {
        if json_out {
            println!("{v}");
        } else {
            table(v);
        }
    };
    match cli.command {
        Cmd::Submit {
            kind,
            args,
            queue,
            priority,
            delay,
            at,
            idempotency_key,
            limit_key,
            wait: and_wait,
        } => {
            let args: Value = match args {
                None => json!({}),
                Some(a) => {
                    let text = match a.strip_prefix('@') {
                        Some(path) => std::fs::read_to_string(path)
                            .with_context(|| format!("reading {path}"))?,
                        None => a,
                    };
                    serde_json::from_str(&text).context("--args is not JSON")?
                }
            };
            let mut body = json!({"kind": kind, "args": args});
            if let Some(q) = queue {
                body["queue"] = json!(q);
            }
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            if let Some(d) = delay {
                body["delay_ms"] = json!(parse_delay_ms(&d)?);
            }
            if let Some(t) = at {
                body["run_at"] = json!(t);
            }
            if let Some(k) = idempotency_key {
                body["idempotency_key"] = json!(k);
            }
            if let Some(k) = limit_key {
                body["limit_key"] = json!(k);
            }
            let job = api.post("/v1/jobs", body).await?;
            if and_wait {
                let id = job["id"].as_str().unwrap_or_default().to_string();
                let j = wait(&api, &id, json_out).await?;
                return finished(&j, json_out);
            }
            show(&job, &|j| println!("{}", table::cell(&j["id"])));
        }
        Cmd::Get { id } => show(&api.get(&format!("/v1/jobs/{id}")).await?, &print_job),
        Cmd::Wait { id } => {
            let j = wait(&api, &id, json_out).await?;
            return finished(&j, json_out);
        }
        Cmd::Ls {
            state,
            kind,
            queue,
            limit,
        } => {
            let mut q = vec![format!("limit={limit}")];
            for (k, v) in [("state", state), ("kind", kind), ("queue", queue)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            let page = api.get(&format!("/v1/jobs?{}", q.join("&"))).await?;
            show(&page, &|p| {
                print_jobs(p["jobs"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            });
        }
        Cmd::Cancel { id } => show(
            &api.post(&format!("/v1/jobs/{id}/cancel"), json!({}))
                .await?,
            &print_job,
        ),
        Cmd::Retry {
            id: Some(id),
            filter,
            ..
        } if filter.is_empty() => show(
            &api.post(&format!("/v1/jobs/{id}/retry"), json!({})).await?,
            &print_job,
        ),
        Cmd::Retry {
            filter,
            dry_run,
            yes,
            ..
        } => bulk_retry(&api, &filter, dry_run, yes, json_out).await?,
        Cmd::Queues { action } => match action.unwrap_or(QueueCmd::Ls) {
            QueueCmd::Ls => show(&api.get("/v1/queues").await?, &print_queues),
            QueueCmd::Pause { name } => show(
                &api.post(&format!("/v1/queues/{name}/pause"), json!({}))
                    .await?,
                &|q| print_queues(&json!({"queues": [q]})),
            ),
            QueueCmd::Resume { name } => show(
                &api.post(&format!("/v1/queues/{name}/resume"), json!({}))
                    .await?,
                &|q| print_queues(&json!({"queues": [q]})),
            ),
            QueueCmd::Limits {
                name,
                concurrency,
                rate,
                key_concurrency,
                key_rate,
                clear,
            } => {
                let path = format!("/v1/queues/{name}/limits");
                let q = if clear {
                    api.send(api.request(reqwest::Method::DELETE, &path))
                        .await?
                } else if concurrency.is_none()
                    && rate.is_none()
                    && key_concurrency.is_none()
                    && key_rate.is_none()
                {
                    let all = api.get("/v1/queues").await?;
                    all["queues"]
                        .as_array()
                        .and_then(|qs| qs.iter().find(|q| q["name"] == name.as_str()))
                        .cloned()
                        .unwrap_or_else(|| json!({"name": name}))
                } else {
                    let mut body = json!({});
                    if let Some(c) = concurrency {
                        body["concurrency"] = json!(c);
                    }
                    if let Some(c) = key_concurrency {
                        body["key_concurrency"] = json!(c);
                    }
                    if let Some(r) = rate {
                        body["rate"] = parse_rate(&r)?;
                    }
                    if let Some(r) = key_rate {
                        body["key_rate"] = parse_rate(&r)?;
                    }
                    api.send(api.request(reqwest::Method::PUT, &path).json(&body))
                        .await?
                };
                show(&q, &print_limits);
            }
        },
        Cmd::Workers { action } => match action.unwrap_or(WorkerCmd::Ls) {
            WorkerCmd::Ls => show(&api.get("/v1/workers").await?, &print_workers),
            WorkerCmd::Quiet { id } => show(
                &api.post(&format!("/v1/workers/{id}/quiet"), json!({}))
                    .await?,
                &|w| print_workers(&json!({"workers": [w]})),
            ),
            WorkerCmd::Stop { id } => show(
                &api.post(&format!("/v1/workers/{id}/stop"), json!({}))
                    .await?,
                &|w| print_workers(&json!({"workers": [w]})),
            ),
        },
        Cmd::Schedules { action } => match action.unwrap_or(ScheduleCmd::Ls) {
            ScheduleCmd::Ls => show(&api.get("/v1/schedules").await?, &print_schedules),
            ScheduleCmd::Show { name, tenant } => show(
                &api.get(&schedule_path(&name, tenant.as_deref(), ""))
                    .await?,
                &print_schedule,
            ),
            ScheduleCmd::Pause { name, tenant } => show(
                &api.post(
                    &schedule_path(&name, tenant.as_deref(), "/pause"),
                    json!({}),
                )
                .await?,
                &|s| print_schedules(&json!({"schedules": [s]})),
            ),
            ScheduleCmd::Resume { name, tenant } => show(
                &api.post(
                    &schedule_path(&name, tenant.as_deref(), "/resume"),
                    json!({}),
                )
                .await?,
                &|s| print_schedules(&json!({"schedules": [s]})),
            ),
            ScheduleCmd::Trigger { name, tenant } => show(
                &api.post(
                    &schedule_path(&name, tenant.as_deref(), "/trigger"),
                    json!({}),
                )
                .await?,
                &print_job,
            ),
        },
        Cmd::Tail { queue, kind } => tail(&api, queue, kind, json_out).await?,
        Cmd::Kinds => show(&api.get("/v1/kinds").await?, &|k| {
            let rows: Vec<Vec<String>> = k["kinds"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|k| vec![table::cell(&k["name"]), table::cell(&k["description"])])
                .collect();
            table::print(&["kind", "description"], &rows);
        }),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "jobmill",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(())
}

/// Filter keys of `retry --filter`, as the bulk action endpoint names them.
const FILTER_KEYS: [&str; 8] = [
    "state",
    "kind",
    "queue",
    "owner",
    "created_after",
    "created_before",
    "error_contains",
    "ids",
];

/// The bulk action body for `--filter KEY=VALUE` arguments.
fn bulk_filter(args: &[String]) -> anyhow::Result<Value> {
    let mut body = json!({});
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--filter '{a}': expected KEY=VALUE"))?;
        if !FILTER_KEYS.contains(&k) {
            return Err(anyhow!(
                "--filter '{a}': unknown key '{k}'; known: {}",
                FILTER_KEYS.join(", ")
            ));
        }
        if body.get(k).is_some() {
            return Err(anyhow!("--filter: '{k}' given twice"));
        }
        body[k] = if k == "ids" {
            json!(v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>())
        } else {
            json!(v)
        };
    }
    Ok(body)
}

/// `retry --filter`: count the matching jobs (a dry run), then, unless only counting, confirm
/// and start the bulk retry. The count is what the server saw a moment ago; the bulk job acts
/// on the jobs matching when it runs.
async fn bulk_retry(
    api: &Api,
    filter: &[String],
    dry_run: bool,
    yes: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;

    let body = bulk_filter(filter)?;
    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let counted = api.post("/v1/jobs/actions/retry", dry).await?;
    let n = counted["count"].as_u64().unwrap_or(0);
    let about = if counted["exact"].as_bool().unwrap_or(true) {
        format!("{n}")
    } else {
        format!("at least {n}")
    };
    if dry_run {
        if json_out {
            println!("{counted}");
        } else {
            println!("{about} jobs match");
        }
        return Ok(());
    }
    if n == 0 && counted["exact"].as_bool().unwrap_or(true) {
        if json_out {
            println!("{counted}");
        } else {
            println!("no job matches; nothing to retry");
        }
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(anyhow!(
                "{about} jobs match; not a terminal to confirm on: pass --yes to retry them"
            ));
        }
        eprint!("Retry {about} jobs? [y/N] ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Err(anyhow!("not confirmed; nothing retried"));
        }
    }
    let job = api.post("/v1/jobs/actions/retry", body).await?;
    if json_out {
        println!("{job}");
    } else {
        println!(
            "retrying {about} jobs: bulk action job {} (follow it with `jobmill wait {}`)",
            table::cell(&job["id"]),
            table::cell(&job["id"])
        );
    }
    Ok(())
}

/// `10/1s` → `{"max": 10, "per": "1s"}`.
fn parse_rate(s: &str) -> anyhow::Result<Value> {
    let (max, per) = s.split_once('/').context("a rate is MAX/PER, like 10/1s")?;
    let max: u32 = max
        .trim()
        .parse()
        .context("a rate's MAX is a whole number, like 10/1s")?;
    Ok(json!({"max": max, "per": per.trim()}))
}

/// A queue's limits and what they are doing.
fn print_limits(q: &Value) {
    let l = &q["limits"];
    if l.is_null() {
        println!("{}: no limits", table::cell(&q["name"]));
        return;
    }
    let rate = |r: &Value| {
        if r.is_null() {
            "-".to_string()
        } else {
            format!("{}/{}", table::cell(&r["max"]), table::cell(&r["per"]))
        }
    };
    let set = &l["set"];
    table::print(
        &[
            "queue",
            "concurrency",
            "rate",
            "key_concurrency",
            "key_rate",
            "running",
            "keys",
            "held_until_ms",
        ],
        &[vec![
            table::cell(&q["name"]),
            table::cell(&set["concurrency"]),
            rate(&set["rate"]),
            table::cell(&set["key_concurrency"]),
            rate(&set["key_rate"]),
            table::cell(&l["running"]),
            table::cell(&l["running_keys"]),
            table::cell(&l["throttled_until_ms"]),
        ]],
    );
    let keys: Vec<Vec<String>> = l["top_keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|k| vec![table::cell(&k["key"]), table::cell(&k["running"])])
        .collect();
    if !keys.is_empty() {
        println!();
        table::print(&["key", "running"], &keys);
    }
}

fn print_schedules(v: &Value) {
    let rows: Vec<Vec<String>> = v["schedules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|s| {
            vec![
                table::cell(&s["tenant"]),
                table::cell(&s["name"]),
                table::cell(&s["cron"]),
                table::cell(&s["timezone"]),
                table::cell(&s["job"]["kind"]),
                table::cell(&s["paused"]),
                table::cell(&s["managed_by"]),
                table::cell(&s["next_run_at"]),
            ]
        })
        .collect();
    table::print(
        &[
            "tenant", "name", "cron", "zone", "kind", "paused", "managed", "next run",
        ],
        &rows,
    );
}

fn print_schedule(s: &Value) {
    print_schedules(&json!({"schedules": [s]}));
    println!();
    println!("next runs:");
    for t in s["next_runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        println!("  {}", table::cell(t));
    }
    println!();
    let rows: Vec<Vec<String>> = s["runs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|r| {
            vec![
                table::cell(&r["fire_time"]),
                table::cell(&r["job_id"]),
                table::cell(&r["state"]),
            ]
        })
        .collect();
    table::print(&["fire time", "job", "state"], &rows);
}

fn print_queues(v: &Value) {
    let rows: Vec<Vec<String>> = v["queues"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|q| {
            vec![
                table::cell(&q["name"]),
                table::cell(&q["paused"]),
                table::cell(&q["counts"]["queued"]),
                table::cell(&q["counts"]["scheduled"]),
                table::cell(&q["counts"]["retrying"]),
                table::cell(&q["counts"]["running"]),
                format!("{:.1}", q["latency_seconds"].as_f64().unwrap_or(0.0)),
                table::cell(&q["consumers"]),
                table::cell(&q["succeeded_1h"]),
                table::cell(&q["failed_1h"]),
            ]
        })
        .collect();
    table::print(
        &[
            "queue",
            "paused",
            "queued",
            "scheduled",
            "retrying",
            "running",
            "latency_s",
            "consumers",
            "ok_1h",
            "failed_1h",
        ],
        &rows,
    );
}

fn print_workers(v: &Value) {
    let rows: Vec<Vec<String>> = v["workers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|w| {
            let queues: Vec<String> = w["queues"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|q| table::cell(&q["name"]))
                .collect();
            vec![
                table::cell(&w["id"]),
                table::cell(&w["state"]),
                format!(
                    "{}/{}",
                    table::cell(&w["busy"]),
                    table::cell(&w["concurrency"])
                ),
                queues.join(","),
                table::cell(&w["counters"]["succeeded"]),
                table::cell(&w["counters"]["failed"]),
                format!(
                    "{} MiB",
                    w["rss_bytes"].as_u64().unwrap_or(0) / (1024 * 1024)
                ),
                table::cell(&w["last_heartbeat_at"]),
            ]
        })
        .collect();
    table::print(
        &[
            "worker",
            "state",
            "busy",
            "queues",
            "ok",
            "failed",
            "rss",
            "heartbeat",
        ],
        &rows,
    );
}

/// Follow `GET /v1/events`, one line per state change.
async fn tail(
    api: &Api,
    queue: Option<String>,
    kind: Option<String>,
    json_out: bool,
) -> anyhow::Result<()> {
    let mut q = Vec::new();
    if let Some(v) = queue {
        q.push(format!("queue={v}"));
    }
    if let Some(v) = kind {
        q.push(format!("kind={v}"));
    }
    let res = api
        .request(reqwest::Method::GET, &format!("/v1/events?{}", q.join("&")))
        .send()
        .await
        .context("reaching the API")?;
    let mut res = if res.status().is_success() {
        res
    } else {
        return api
            .send(api.request(reqwest::Method::GET, "/v1/events"))
            .await
            .map(|_| ());
    };
    let mut buf = String::new();
    let mut out = std::io::stdout();
    while let Some(chunk) = res.chunk().await.context("reading the stream")? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            if data.is_empty() {
                continue;
            }
            let j: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if json_out {
                writeln!(out, "{j}")?;
            } else {
                writeln!(
                    out,
                    "{}  {}  {}  {}",
                    table::cell(&j["id"]),
                    table::cell(&j["kind"]),
                    table::cell(&j["queue"]),
                    table::cell(&j["state"]),
                )?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(f) = e.downcast_ref::<ApiFailure>() {
                eprintln!("error: {f}");
                ExitCode::from(EXIT_API)
            } else if e.downcast_ref::<JobNotSucceeded>().is_some() {
                eprintln!("{e}");
                ExitCode::from(EXIT_JOB)
            } else {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delay_ms("500ms").unwrap(), 500);
        assert_eq!(parse_delay_ms("10s").unwrap(), 10_000);
        assert_eq!(parse_delay_ms("5m").unwrap(), 300_000);
        assert!(parse_delay_ms("soon").is_err());
    }

    #[test]
    fn retry_filters_become_the_bulk_body() {
        let args = [
            "state=failed".to_string(),
            "error_contains=a=b".to_string(),
            "ids=a, b,".to_string(),
        ];
        assert_eq!(
            bulk_filter(&args).unwrap(),
            json!({"state": "failed", "error_contains": "a=b", "ids": ["a", "b"]})
        );
        assert!(bulk_filter(&["colour=red".to_string()]).is_err());
        assert!(bulk_filter(&["state".to_string()]).is_err());
        assert!(bulk_filter(&["kind=a".to_string(), "kind=b".to_string()]).is_err());
    }

    #[test]
    fn retry_takes_an_id_or_a_filter() {
        assert!(Cli::try_parse_from(["jobmill", "retry", "some-id"]).is_ok());
        assert!(
            Cli::try_parse_from(["jobmill", "retry", "--filter", "state=failed", "--yes"]).is_ok()
        );
        assert!(Cli::try_parse_from(["jobmill", "retry"]).is_err());
        assert!(Cli::try_parse_from(["jobmill", "retry", "x", "--filter", "kind=a"]).is_err());
        assert!(Cli::try_parse_from(["jobmill", "retry", "x", "--dry-run"]).is_err());
    }

    #[test]
    fn the_command_tree_is_valid() {
        Cli::command().debug_assert();
    }
}
