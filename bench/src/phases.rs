//! The phases of a run, in order: seed, start, resolve, floor, create,
//! catalog.

use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use aitokens::{
    api::{
        echo::pb::{EchoRequest, echo_client::EchoClient},
        pb::{
            CreateTokenRequest, ListTokensRequest, Token, token_admin_client::TokenAdminClient,
            token_resolver_client::TokenResolverClient,
        },
    },
    model::PageCursor,
};

use crate::{
    CATALOG_TENANT, Error, LIST_PAGE, Options, Phase, READY_TIMEOUT, Result, TENANT,
    load::{
        cpu_time, drive, histogram, list_figures, quantile_us, record, resolve_one, status_text,
        token_name, value_for,
    },
    report::{CatalogFigures, LoadFigures, Ratios, Report},
    say,
    server::{DataDir, ServerProcess},
};

/// One run: the server binary and the options.
pub struct Bench {
    /// The aitokens binary to run as the server.
    pub exe: PathBuf,
    /// What to run.
    pub options: Options,
}

impl Bench {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.options.duration)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.options.warmup)
    }

    /// Seed, resolve, floor and create, on one server.
    pub async fn main_phases(&self, report: &mut Report) -> Result<()> {
        let data = DataDir::prepare(true, &self.options).await?;
        say(&format!("seeding {} tokens ...", self.options.tokens));
        report.seed = Some(data.seed(TENANT, self.options.tokens).await?);
        let server = ServerProcess::start(&self.exe, &data, &self.options.server_log).await?;
        report.startup_ms = Some(server.ready_after.as_secs_f64() * 1e3);
        report.cache_warm_ms = self.cache_warm(&server).await?;
        let channels = data
            .channels(server.internal, "agent", self.options.connections)
            .await?;
        let callers = self.options.concurrency as usize;
        let tokens = self.options.tokens;

        if !self.options.skip.contains(&Phase::Resolve) {
            let clients: Vec<_> = channels
                .iter()
                .cloned()
                .map(TokenResolverClient::new)
                .collect();
            let resolve = move |caller: usize, _seq: u64, random: u64| {
                let mut client = clients[caller % clients.len()].clone();
                async move { resolve_one(&mut client, TENANT, random % tokens).await }
            };
            say("resolve ...");
            report.resolve = Some(self.load(&server, callers, resolve).await?);

            let clients: Vec<_> = channels.iter().cloned().map(EchoClient::new).collect();
            let filler = value_for(0);
            let echo = move |caller: usize, _seq: u64, random: u64| {
                let mut client = clients[caller % clients.len()].clone();
                let message = EchoRequest {
                    name: token_name(TENANT, random % tokens),
                    value: filler.clone(),
                };
                async move {
                    let reply = client.echo(message.clone()).await.map_err(status_text)?;
                    if reply.get_ref().name != message.name {
                        return Err("echo returned another message".to_owned());
                    }
                    Ok(())
                }
            };
            say("floor (echo) ...");
            report.floor = Some(self.load(&server, callers, echo).await?);
            if let (Some(r), Some(f)) = (&report.resolve, &report.floor) {
                report.ratios = Some(Ratios {
                    throughput: r.requests_per_s / f.requests_per_s,
                    p99: r.p99_us / f.p99_us,
                    server_cpu: r.server_cpu_us_per_req / f.server_cpu_us_per_req,
                });
            }
            if data.database.is_some() {
                say("resolve, two replicas ...");
                report.resolve_two_replicas = Some(self.two_replicas(&data, &server).await?);
            }
        }

        if !self.options.skip.contains(&Phase::Create) {
            let admin = data
                .channels(server.admin, "admin", self.options.connections)
                .await?;
            let clients: Vec<_> = admin.into_iter().map(TokenAdminClient::new).collect();
            let create = |phase: &'static str| {
                let clients = clients.clone();
                move |caller: usize, seq: u64, _random: u64| {
                    let mut client = clients[caller % clients.len()].clone();
                    let request = CreateTokenRequest {
                        parent: format!("tenants/{TENANT}-create"),
                        token_id: format!("{phase}-{caller}-{seq}"),
                        token: Some(Token {
                            display_name: format!("bench create {caller} {seq}"),
                            ..Token::default()
                        }),
                        value: value_for(seq),
                        replaces: String::new(),
                    };
                    async move {
                        client.create_token(request).await.map_err(status_text)?;
                        Ok(())
                    }
                }
            };
            let creates = self.options.creates;
            say("create, one caller ...");
            report.create_sequential = Some(
                self.measure(&server, 1, creates, Duration::ZERO, create("s"))
                    .await?,
            );
            say("create, concurrent ...");
            let per_caller = creates.div_ceil(callers as u64);
            report.create_concurrent = Some(
                self.measure(&server, callers, per_caller, Duration::ZERO, create("c"))
                    .await?,
            );
        }
        server.stop().await
    }

    /// The large-catalog phase, on a server of its own.
    pub async fn catalog_phase(&self) -> Result<CatalogFigures> {
        let tokens = self.options.catalog_tokens;
        let data = DataDir::prepare(false, &self.options).await?;
        say(&format!("catalog: seeding {tokens} tokens ..."));
        let seed = data.seed(CATALOG_TENANT, tokens).await?;
        let server = ServerProcess::start(&self.exe, &data, &self.options.server_log).await?;
        let rss_after_ready_kib = server.status_kib("VmRSS")?;
        let cache_warm_ms = self.cache_warm(&server).await?;
        let rss_cache_warm_kib = server.status_kib("VmRSS")?;
        let admin = data.channels(server.admin, "admin", 1).await?;
        let mut client = TokenAdminClient::new(admin[0].clone());

        let depth = tokens - LIST_PAGE as u64;
        // The page token the server hands out after `depth` tokens (sequence
        // numbers of a freshly seeded database run 1..=tokens).
        let deep_token = PageCursor {
            kind: "tokens",
            scope: CATALOG_TENANT.to_owned(),
            after_seq: depth as i64,
        }
        .encode();
        let mut first = histogram()?;
        let mut deep = histogram()?;
        say("catalog: ListTokens ...");
        for _ in 0..self.options.list_calls {
            for (page_token, hist, expect_next) in [
                (String::new(), &mut first, true),
                (deep_token.clone(), &mut deep, false),
            ] {
                let started = Instant::now();
                let page = client
                    .list_tokens(ListTokensRequest {
                        parent: format!("tenants/{CATALOG_TENANT}"),
                        page_size: LIST_PAGE as i32,
                        page_token,
                        unused_for: None,
                    })
                    .await
                    .map_err(|s| Error::Internal(format!("ListTokens: {}", status_text(s))))?;
                record(hist, started.elapsed());
                let page = page.into_inner();
                if page.tokens.len() != LIST_PAGE || page.next_page_token.is_empty() == expect_next
                {
                    return Err(Error::Internal(format!(
                        "ListTokens returned {} tokens (next page: {})",
                        page.tokens.len(),
                        !page.next_page_token.is_empty()
                    )));
                }
            }
        }
        let list_first_page = list_figures(0, &first);
        let list_deep_page = list_figures(depth, &deep);

        let channels = data
            .channels(server.internal, "agent", self.options.connections)
            .await?;
        let clients: Vec<_> = channels.into_iter().map(TokenResolverClient::new).collect();
        let resolve = move |caller: usize, _seq: u64, random: u64| {
            let mut client = clients[caller % clients.len()].clone();
            async move { resolve_one(&mut client, CATALOG_TENANT, random % tokens).await }
        };
        say("catalog: resolve ...");
        // VmHWM is left alone here: the phase's peak covers start-up, the
        // listing and the resolve load.
        let resolve = self
            .load_keep_peak(&server, self.options.concurrency as usize, resolve)
            .await?;
        let server_peak_rss_kib = server.status_kib("VmHWM")?;
        let startup_ms = server.ready_after.as_secs_f64() * 1e3;
        server.stop().await?;
        Ok(CatalogFigures {
            tokens,
            seed,
            startup_ms,
            rss_after_ready_kib,
            cache_warm_ms,
            rss_cache_warm_kib,
            deep_over_first_p50: list_deep_page.p50_us / list_first_page.p50_us,
            list_first_page,
            list_deep_page,
            resolve,
            server_peak_rss_kib,
        })
    }

    /// Waits until the server has warmed its resolve cache (it logs that);
    /// returns milliseconds since it was spawned, or none when the cache is off.
    async fn cache_warm(&self, server: &ServerProcess) -> Result<Option<f64>> {
        if self.options.cache_mib == 0 {
            return Ok(None);
        }
        loop {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains("resolve cache warmed") {
                return Ok(Some(server.started.elapsed().as_secs_f64() * 1e3));
            }
            if log.contains("warming the resolve cache stopped") {
                return Err(Error::Internal(format!(
                    "the server could not warm its resolve cache; its log:\n{}",
                    server.log_tail()
                )));
            }
            if server.started.elapsed() > READY_TIMEOUT {
                return Err(Error::Internal(format!(
                    "the resolve cache was not warm after {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Warm-up, then a measured window with the peak RSS reset at its start.
    async fn load<F, Fut>(
        &self,
        server: &ServerProcess,
        callers: usize,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        server.reset_peak_rss();
        self.load_keep_peak(server, callers, op).await
    }

    async fn load_keep_peak<F, Fut>(
        &self,
        server: &ServerProcess,
        callers: usize,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let per_caller = self.options.max_requests.div_ceil(callers as u64);
        self.measure(server, callers, per_caller, self.warmup(), op)
            .await
    }

    /// Runs `op` from `callers` tasks: first `warmup` unmeasured, then for
    /// the configured duration or until each caller made `per_caller` calls.
    async fn measure<F, Fut>(
        &self,
        server: &ServerProcess,
        callers: usize,
        per_caller: u64,
        warmup: Duration,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        self.measure_on(&[server], callers, per_caller, warmup, op)
            .await
    }

    /// [`Bench::measure`] with the server CPU of every one of `servers`
    /// counted (the peak RSS is the first's).
    async fn measure_on<F, Fut>(
        &self,
        servers: &[&ServerProcess],
        callers: usize,
        per_caller: u64,
        warmup: Duration,
        op: F,
    ) -> Result<LoadFigures>
    where
        F: Fn(usize, u64, u64) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        if !warmup.is_zero() {
            drive(callers, warmup, per_caller, 1 << 40, op.clone()).await?;
        }
        let servers_cpu = || -> Result<Duration> {
            servers
                .iter()
                .map(|s| s.cpu_time())
                .sum::<Result<Duration>>()
        };
        let server_cpu = servers_cpu()?;
        let loader_cpu = cpu_time("self")?;
        let started = Instant::now();
        let outcome = drive(callers, self.duration(), per_caller, 0, op).await?;
        let seconds = started.elapsed().as_secs_f64();
        let server_cpu = servers_cpu()?.saturating_sub(server_cpu);
        let loader_cpu = cpu_time("self")?.saturating_sub(loader_cpu);
        let ok = outcome.latency.len();
        let per_req = |cpu: Duration| {
            if ok == 0 {
                0.0
            } else {
                cpu.as_secs_f64() * 1e6 / ok as f64
            }
        };
        Ok(LoadFigures {
            requests: ok,
            errors: outcome.errors,
            first_error: outcome.first_error,
            seconds,
            requests_per_s: ok as f64 / seconds,
            p50_us: quantile_us(&outcome.latency, 0.5),
            p99_us: quantile_us(&outcome.latency, 0.99),
            p999_us: quantile_us(&outcome.latency, 0.999),
            max_us: outcome.latency.max() as f64 / 1e3,
            server_cpu_us_per_req: per_req(server_cpu),
            loader_cpu_us_per_req: per_req(loader_cpu),
            server_peak_rss_kib: servers[0].status_kib("VmHWM")?,
        })
    }

    /// PostgreSQL: a second replica over the same database, and the resolve
    /// load of the main phase spread over both (half the connections each).
    async fn two_replicas(&self, data: &DataDir, first: &ServerProcess) -> Result<LoadFigures> {
        let second = ServerProcess::start_logging_to(
            &self.exe,
            data,
            &self.options.server_log,
            "server-b.log",
        )
        .await?;
        self.cache_warm(&second).await?;
        let per_replica = self.options.connections.div_ceil(2).max(1);
        let mut clients = Vec::new();
        for server in [first, &second] {
            let channels = data.channels(server.internal, "agent", per_replica).await?;
            clients.extend(channels.into_iter().map(TokenResolverClient::new));
        }
        let tokens = self.options.tokens;
        let resolve = move |caller: usize, _seq: u64, random: u64| {
            let mut client = clients[caller % clients.len()].clone();
            async move { resolve_one(&mut client, TENANT, random % tokens).await }
        };
        let callers = self.options.concurrency as usize;
        let per_caller = self.options.max_requests.div_ceil(callers as u64);
        first.reset_peak_rss();
        let figures = self
            .measure_on(
                &[first, &second],
                callers,
                per_caller,
                self.warmup(),
                resolve,
            )
            .await?;
        second.stop().await?;
        Ok(figures)
    }
}
