//! `GET /api/v1/deployments/{name}/logs`: the lines of a deployment's instances, fetched
//! from each node's agent over its control connection, merged by time. A cursor (one
//! byte offset per instance) lets a follower ask for what came since; instances that
//! start later join with their whole output.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::IntoParams;
use zw_proto::agent::LogCursor;
use zw_proto::api::{Instance, LogEntry, Logs};
use zw_proto::time::Timestamp;

use crate::error::{ApiResult, Query};
use crate::App;

/// How long an agent may take to answer.
const AGENT_ANSWER: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// From a previous answer: only lines after it.
    pub cursor: Option<String>,
    /// Without a cursor, the last lines of each instance (default 50).
    pub tail: Option<u32>,
    /// Only the instances of this release.
    pub release: Option<u64>,
    /// Only this instance.
    pub instance: Option<String>,
}

/// `inst-a:120,inst-b:0` → offsets.
fn parse_cursor(text: &str) -> HashMap<String, u64> {
    text.split(',')
        .filter_map(|part| {
            let (id, off) = part.split_once(':')?;
            Some((id.to_string(), off.parse().ok()?))
        })
        .take(4096)
        .collect()
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/logs", tag = "releases", params(LogParams),
    responses((status = 200, body = Logs)))]
pub(crate) async fn logs(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(p): Query<LogParams>,
) -> ApiResult<axum::Json<Logs>> {
    app.store.deployment(&name).await?;
    let filter = zw_store::InstanceFilter {
        deployment: Some(name.clone()),
        ..Default::default()
    };
    let mut instances: Vec<Instance> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = app
            .store
            .instances(&filter, after.as_deref(), Some(zw_store::MAX_PAGE))
            .await?;
        instances.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    instances.retain(|i| {
        p.release.is_none_or(|r| i.release == r) && p.instance.as_ref().is_none_or(|id| i.id == *id)
    });
    let following = p.cursor.is_some();
    let mut cursor = p.cursor.as_deref().map(parse_cursor).unwrap_or_default();
    let mut by_node: BTreeMap<&str, Vec<LogCursor>> = BTreeMap::new();
    for i in &instances {
        by_node.entry(&i.node).or_default().push(LogCursor {
            instance: i.id.clone(),
            // a follower gets all of a new instance's output
            from: cursor.get(&i.id).copied().or(following.then_some(0)),
            tail: p.tail.unwrap_or(50),
        });
    }
    let mut waiting = Vec::new();
    let mut unreachable = Vec::new();
    for (node, cursors) in by_node {
        let sender = app
            .agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        match sender {
            Some(s) if s.send((cursors, tx)).await.is_ok() => waiting.push((node, rx)),
            _ => unreachable.push(node.to_string()),
        }
    }
    let mut lines = Vec::new();
    for (node, rx) in waiting {
        let Ok(Ok(chunks)) = tokio::time::timeout(AGENT_ANSWER, rx).await else {
            unreachable.push(node.to_string());
            continue;
        };
        for chunk in chunks {
            let Some(i) = instances.iter().find(|i| i.id == chunk.instance) else {
                continue;
            };
            cursor.insert(chunk.instance.clone(), chunk.next);
            lines.extend(chunk.lines.into_iter().map(|l| LogEntry {
                at: Timestamp(l.at),
                instance: i.id.clone(),
                release: i.release,
                node: i.node.clone(),
                line: l.text,
            }));
        }
    }
    // Stable: one instance's lines keep their order within the same quarter second.
    lines.sort_by_key(|l| l.at.0);
    cursor.retain(|id, _| instances.iter().any(|i| i.id == *id));
    let mut cursor: Vec<(String, u64)> = cursor.into_iter().collect();
    cursor.sort();
    Ok(axum::Json(Logs {
        lines,
        cursor: cursor
            .iter()
            .map(|(id, off)| format!("{id}:{off}"))
            .collect::<Vec<_>>()
            .join(","),
        unreachable,
    }))
}
