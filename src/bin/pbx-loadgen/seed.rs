//! `--seed N`: registers N benchmark tenants (`<prefix><index>`) through
//! AdminService.CreateTenant, with the simulator's deterministic trusted apps
//! (`pbx-sim --trusted-apps N` creates app-000001.. / secret-000001..).
//! With `--rate R` tenant n is registered no earlier than n / R seconds
//! after the start, so their renewals come evenly spread (a soak test
//! seeds at tenants / (lifetime x at_fraction) per second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::{AppCredentials, CreateTenantRequest};
use tonic::transport::Channel;
use tonic::Code;

pub struct SeedPlan {
    pub count: u64,
    pub first_index: u64,
    pub prefix: String,
    pub width: usize,
    pub sim_base_url: String,
    pub concurrency: u32,
    pub api_key: Option<String>,
    pub rate: Option<f64>,
}

pub async fn seed(channels: Vec<Channel>, plan: SeedPlan) -> Result<()> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let existed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..plan.concurrency {
        let channel = channels[i as usize % channels.len()].clone();
        let (plan, next, created, existed) =
            (plan.clone(), next.clone(), created.clone(), existed.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = AdminServiceClient::new(channel);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= plan.count {
                    return Ok::<(), anyhow::Error>(());
                }
                if let Some(r) = plan.rate {
                    let due = super::rate::due(tokio::time::Instant::from_std(started), r, n);
                    tokio::time::sleep_until(due).await;
                }
                let index = plan.first_index + n;
                let mut req = tonic::Request::new(CreateTenantRequest {
                    tenant_id: super::tenant_id(&plan.prefix, index, plan.width),
                    display_name: format!("Benchmark tenant {index}"),
                    pbx_base_url: plan.sim_base_url.clone(),
                    trusted_app: Some(AppCredentials {
                        client_id: format!("app-{:06}", index + 1),
                        client_secret: format!("secret-{:06}", index + 1),
                    }),
                    ..Default::default()
                });
                if let Some(key) = &plan.api_key {
                    req.metadata_mut()
                        .insert("authorization", format!("Bearer {key}").parse()?);
                }
                match client.create_tenant(req).await {
                    Ok(_) => {
                        let c = created.fetch_add(1, Ordering::Relaxed) + 1;
                        if c % 10_000 == 0 {
                            eprintln!(
                                "seeded {c} tenants in {:.1}s",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(s) if s.code() == Code::AlreadyExists => {
                        existed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => bail!("CreateTenant for index {index} failed: {s}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "seeding done: {} created, {} already existed, {:.1}s",
        created.load(Ordering::Relaxed),
        existed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
