//! The store's behaviour, run against SQLite and (when configured) PostgreSQL.

use std::time::Duration;

use zw_proto::api::*;
use zw_store::testkit::TestDb;
use zw_store::{Backend, NodeFilter, Principal, Store, StoreError};

async fn seeded(store: &Store) -> (Node, Instance) {
    store
        .create_region(NewRegion {
            name: "eu".into(),
            balancer_address: Some("127.0.0.1:8000".into()),
            https_address: None,
        })
        .await
        .unwrap();
    let node = store
        .create_node(NewNode {
            hostname: "worker-1".into(),
            address: "127.0.0.1".into(),
            region: "eu".into(),
            node_type: NodeType::Worker,
            state: None,
            resources: Resources {
                cpu_millis: 2000,
                memory_mb: 4096,
                disk_mb: 10_000,
            },
        })
        .await
        .unwrap();
    store
        .create_image(NewImage {
            name: "hello".into(),
            command: vec!["/bin/hello".into()],
            env: Default::default(),
            runtime: Runtime::Process,
            rootfs: None,
        })
        .await
        .unwrap();
    store
        .create_deployment(NewDeployment {
            name: "web".into(),
            image: "hello".into(),
            replicas: 1,
            regions: vec!["eu".into()],
            port: 8080,
            health_check: HealthCheckSpec::default(),
            strategy: None,
            max_surge: None,
        })
        .await
        .unwrap();
    let inst = store
        .create_instance(NewInstance {
            deployment: "web".into(),
            node: node.id.clone(),
            state: Some(InstanceState::Started),
            address: Some("127.0.0.1".into()),
            port: Some(31000),
        })
        .await
        .unwrap();
    (node, inst)
}

#[tokio::test]
async fn routing_state_follows_writes() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        let mut changes = store.changes();
        let (_node, inst) = seeded(&store).await;
        assert!(
            changes.has_changed().unwrap(),
            "{:?}: writes move the change counter",
            db.backend
        );
        changes.borrow_and_update();

        // an unverified domain does not route
        store
            .create_domain(NewDomain {
                name: "app.example.com".into(),
                deployment: "web".into(),
                verified: false,
            })
            .await
            .unwrap();
        let s = store.routing_state().await.unwrap();
        assert!(s.domains.is_empty());
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].port, 31000);
        assert_eq!(s.regions["eu"].as_deref(), Some("127.0.0.1:8000"));

        store
            .update_domain(
                "app.example.com",
                DomainPatch {
                    verified: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(changes.has_changed().unwrap());
        let s = store.routing_state().await.unwrap();
        assert_eq!(s.domains.len(), 1);

        // a stopping instance takes no traffic
        store
            .update_instance(
                &inst.id,
                InstancePatch {
                    state: Some(InstanceState::Stopping),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(store.routing_state().await.unwrap().endpoints.is_empty());

        // deleting the deployment removes its domains and instances
        store.delete_deployment("web").await.unwrap();
        let counts = store.counts().await.unwrap();
        assert_eq!(
            (
                counts["domains"],
                counts["instances"],
                counts["deployments"]
            ),
            (0, 0, 0)
        );
        store.close().await;
    }
}

#[tokio::test]
async fn bad_writes_name_the_field_and_write_nothing() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        seeded(&store).await;
        let before = store.counts().await.unwrap();

        let e = store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(f) if f.field == "name"),
            "{:?}: {e}",
            db.backend
        );

        let e = store
            .create_deployment(NewDeployment {
                name: "api".into(),
                image: "nope".into(),
                replicas: 1,
                regions: vec!["eu".into()],
                port: 80,
                health_check: HealthCheckSpec::default(),
                strategy: None,
                max_surge: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(f) if f.field == "image" && f.message.contains("unknown image `nope`")),
            "{e}"
        );

        let e = store
            .create_deployment(NewDeployment {
                name: "api".into(),
                image: "hello".into(),
                replicas: 1,
                regions: vec!["eu".into(), "mars".into()],
                port: 80,
                health_check: HealthCheckSpec::default(),
                strategy: None,
                max_surge: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(f) if f.field == "regions[1]"),
            "{e}"
        );

        let e = store.delete_region("eu").await.unwrap_err();
        assert!(
            matches!(e, StoreError::Conflict(_)),
            "{:?}: a region in use cannot go: {e}",
            db.backend
        );

        let e = store
            .apply(ApplySpec {
                image: None,
                deployment: NewDeployment {
                    name: "api".into(),
                    image: "hello".into(),
                    replicas: 1,
                    regions: vec!["eu".into()],
                    port: 80,
                    health_check: HealthCheckSpec::default(),
                    strategy: None,
                    max_surge: None,
                },
                domains: vec!["ok.example.com".into(), "Bad Domain".into()],
                move_domains: false,
                rollout_timeout_secs: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid(f) if f.field == "domains[1]"),
            "{e}"
        );

        assert_eq!(
            store.counts().await.unwrap(),
            before,
            "{:?}: nothing written",
            db.backend
        );
        assert!(matches!(
            store.node("node-nope").await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        store.close().await;
    }
}

#[tokio::test]
async fn lists_page_and_filter() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        seeded(&store).await;
        for i in 0..5 {
            store
                .create_node(NewNode {
                    hostname: format!("edge-{i}"),
                    address: "127.0.0.1".into(),
                    region: "eu".into(),
                    node_type: NodeType::Edge,
                    state: Some(if i == 0 {
                        NodeState::Draining
                    } else {
                        NodeState::Ready
                    }),
                    resources: Resources::default(),
                })
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = store
                .nodes(&NodeFilter::default(), after.as_deref(), Some(2))
                .await
                .unwrap();
            assert!(p.items.len() <= 2);
            seen.extend(p.items.iter().map(|n| n.id.clone()));
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 6, "{:?}", db.backend);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "pages are in key order without repeats");

        let filter = NodeFilter {
            node_type: Some(NodeType::Edge),
            state: Some(NodeState::Ready),
            region: None,
        };
        let ready_edges = store.nodes(&filter, None, None).await.unwrap();
        assert_eq!(ready_edges.items.len(), 4);
        assert!(ready_edges
            .items
            .iter()
            .all(|n| n.node_type == NodeType::Edge && n.state == NodeState::Ready));
        store.close().await;
    }
}

#[tokio::test]
async fn snapshot_versions_only_grow_and_never_repeat_content() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap();
        let a = store.record_snapshot("eu", "sha256:a", "{}").await.unwrap();
        let again = store.record_snapshot("eu", "sha256:a", "{}").await.unwrap();
        let b = store
            .record_snapshot("eu", "sha256:b", "{\"http\":{}}")
            .await
            .unwrap();
        assert_eq!((a.version, again.version, b.version), (1, 1, 2));
        for i in 0..30 {
            store
                .record_snapshot("eu", &format!("sha256:{i}"), "{}")
                .await
                .unwrap();
        }
        let latest = store.latest_snapshots().await.unwrap();
        assert_eq!(latest["eu"].version, 32);
        assert!(
            store.counts().await.unwrap()["snapshots"] <= 21,
            "old versions are pruned"
        );
        store.close().await;

        // versions survive a restart
        let store = Store::open(&db.url).await.unwrap();
        assert_eq!(
            store
                .record_snapshot("eu", "sha256:new", "{}")
                .await
                .unwrap()
                .version,
            33
        );
        store.close().await;
    }
}

#[tokio::test]
async fn tokens_are_stored_hashed_and_shown_once() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        let admin = store
            .bootstrap_admin()
            .await
            .unwrap()
            .expect("first start makes a token");
        assert!(
            store.bootstrap_admin().await.unwrap().is_none(),
            "a second start does not"
        );
        assert_eq!(
            store.authenticate(&admin).await.unwrap(),
            Some(Principal::Admin)
        );
        assert_eq!(store.authenticate("zw_admin_wrong").await.unwrap(), None);
        assert_eq!(store.authenticate("").await.unwrap(), None);

        let join = store.create_join_token(TokenRole::Edge).await.unwrap();
        let secret = join.token.clone().unwrap();
        assert_eq!(
            store.authenticate(&secret).await.unwrap(),
            Some(Principal::Join {
                role: TokenRole::Edge,
                token: join.id.clone(),
                bound_to: None
            })
        );
        let listed = store.join_tokens(None, None).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        assert!(
            listed.items[0].token.is_none(),
            "listing never shows the secret"
        );
        store.delete_join_token(&join.id).await.unwrap();
        assert_eq!(store.authenticate(&secret).await.unwrap(), None);
        store.close().await;
    }
}

fn hello(region: &str, version: Option<u64>) -> zw_store::EdgeHello<'_> {
    zw_store::EdgeHello {
        id: "edge-1",
        region,
        address: "127.0.0.1:8080",
        admin_address: Some("127.0.0.1:9080"),
        version,
        hash: version.map(|_| "sha256:x"),
        token: None,
    }
}

#[tokio::test]
async fn edge_status_tracks_hello_ack_and_nack() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap();
        let e = store.edge_hello(&hello("mars", None)).await.unwrap_err();
        assert!(e.to_string().contains("unknown region `mars`"), "{e}");
        store.edge_hello(&hello("eu", Some(3))).await.unwrap();
        let edge = store.edge_proxy("edge-1").await.unwrap();
        assert!(edge.connected);
        assert_eq!(edge.applied_version, Some(3));
        assert_eq!(edge.admin_address.as_deref(), Some("127.0.0.1:9080"));
        store.edge_ack("edge-1", 4, "sha256:y").await.unwrap();
        store
            .edge_nack("edge-1", Some(4), "http.routers: too many")
            .await
            .unwrap();
        let edge = store.edge_proxy("edge-1").await.unwrap();
        assert_eq!(edge.applied_version, Some(4));
        assert_eq!(
            edge.last_nack_error.as_deref(),
            Some("http.routers: too many")
        );
        assert!(edge.last_ack_at.is_some() && edge.last_nack_at.is_some());
        store.edge_disconnected("edge-1").await.unwrap();
        assert!(!store.edge_proxy("edge-1").await.unwrap().connected);
        store.close().await;
    }
}

#[tokio::test]
async fn replicas_sharing_postgres_see_each_others_writes() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    assert_eq!(db.backend, Backend::Postgres);
    let a = Store::open(&db.url).await.unwrap();
    let b = Store::open(&db.url).await.unwrap();
    let mut b_changes = b.changes();
    b_changes.borrow_and_update();
    a.create_region(NewRegion {
        name: "eu".into(),
        balancer_address: None,
        https_address: None,
    })
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), b_changes.changed())
        .await
        .expect("replica b is notified of replica a's write")
        .unwrap();
    a.close().await;
    b.close().await;
}

/// Writers that read before they write (reference checks) must queue behind each other,
/// not fail with "database is locked" when another write commits first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_all_succeed() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        seeded(&store).await;
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                if i.is_multiple_of(2) {
                    s.create_domain(NewDomain {
                        name: format!("d{i}.example.com"),
                        deployment: "web".into(),
                        verified: true,
                    })
                    .await
                    .map(|_| ())
                } else {
                    s.record_snapshot("eu", &format!("sha256:{i}"), "{}")
                        .await
                        .map(|_| ())
                }
            }));
        }
        for t in tasks {
            t.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{:?}: {e}", db.backend));
        }
        assert_eq!(store.counts().await.unwrap()["domains"], 20);
        store.close().await;
    }
}

/// The edge's database provider reads the operator's schema but never migrates it.
#[tokio::test]
async fn readers_do_not_migrate() {
    let db = TestDb::sqlite();
    let e = match Store::open_reader(&db.url).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a reader opened an empty database"),
    };
    assert!(e.contains("start the operator on it first"), "{e}");
    Store::open(&db.url).await.unwrap().close().await;
    let reader = Store::open_reader(&db.url).await.unwrap();
    assert!(reader.routing_state().await.unwrap().regions.is_empty());
}

async fn agent_node(store: &Store, id: &str, region: &str, memory_mb: u64) {
    store
        .agent_hello(&zw_store::AgentHello {
            node_id: id,
            hostname: id,
            region,
            address: "127.0.0.1",
            ingress_address: "127.0.0.1:7443",
            resources: Resources {
                cpu_millis: 2000,
                memory_mb,
                disk_mb: 1000,
            },
            drivers: &[],
            token: None,
        })
        .await
        .unwrap();
}

async fn app(store: &Store, name: &str, replicas: u32, regions: &[&str]) {
    let domain = format!("{name}.test");
    let mut spec = apply_spec(name, regions, &[&domain], false);
    spec.deployment.replicas = replicas;
    store.apply(spec).await.unwrap();
}

async fn placement(store: &Store, deployment: &str) -> std::collections::BTreeMap<String, usize> {
    let mut by_node = std::collections::BTreeMap::new();
    for i in store
        .instances(
            &zw_store::InstanceFilter {
                deployment: Some(deployment.into()),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .unwrap()
        .items
    {
        *by_node.entry(i.node).or_insert(0) += 1;
    }
    by_node
}

#[tokio::test]
async fn the_scheduler_spreads_respects_room_and_regions_and_moves_off_lost_nodes() {
    for db in TestDb::all().await {
        let store = &Store::open(&db.url).await.unwrap();
        for r in ["eu", "us"] {
            store
                .create_region(NewRegion {
                    name: r.into(),
                    balancer_address: None,
                    https_address: None,
                })
                .await
                .unwrap();
        }
        agent_node(store, "node-a", "eu", 4096).await;
        agent_node(store, "node-b", "eu", 4096).await;
        // Room for exactly one instance.
        agent_node(store, "node-small", "eu", zw_store::INSTANCE_MEMORY_MB).await;
        agent_node(store, "node-us", "us", 4096).await;

        app(store, "web", 4, &["eu"]).await;
        let s = store.schedule().await.unwrap();
        assert_eq!(s.placed.len(), 4, "{s:?}");
        let p = placement(store, "web").await;
        assert_eq!(p.values().sum::<usize>(), 4);
        assert!(p.values().all(|n| *n <= 2), "spread: {p:?}");
        assert!(
            !p.contains_key("node-us"),
            "only the requested region: {p:?}"
        );
        assert!(p.get("node-small").copied().unwrap_or(0) <= 1, "{p:?}");
        // A second pass has nothing to do.
        assert!(!store.schedule().await.unwrap().changed());

        // Scale down, then past what fits: the shortfall is reported, not hidden.
        store
            .update_deployment(
                "web",
                DeploymentPatch {
                    replicas: Some(2),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let s = store.schedule().await.unwrap();
        assert_eq!(s.removed.len(), 2, "{s:?}");
        assert_eq!(placement(store, "web").await.values().sum::<usize>(), 2);
        app(store, "huge", 200, &["eu"]).await;
        let s = store.schedule().await.unwrap();
        let why = s.unplaced.get("huge").expect("huge is short of room");
        assert!(why.contains("no ready worker node in eu"), "{why}");
        store.delete_deployment("huge").await.unwrap();

        // node-a goes silent: suspect first (still holds its instances), then lost.
        let before = placement(store, "web").await;
        tokio::time::sleep(Duration::from_millis(1_600)).await;
        for other in ["node-b", "node-small", "node-us"] {
            let r = Resources {
                memory_mb: 4096,
                ..Resources::default()
            };
            store.agent_heartbeat(other, r).await.unwrap();
        }
        // An operator that has just started gives every node its full timeout.
        let just_started = zw_proto::time::unix_millis();
        assert!(store
            .mark_silent_nodes(1_000, 60_000, just_started)
            .await
            .unwrap()
            .is_empty());
        let changed = store.mark_silent_nodes(1_000, 60_000, 0).await.unwrap();
        assert_eq!(changed, vec![("node-a".to_string(), NodeState::Suspect)]);
        store.schedule().await.unwrap();
        assert_eq!(
            placement(store, "web").await,
            before,
            "suspect: nothing moves"
        );
        let changed = store.mark_silent_nodes(1_000, 1_500, 0).await.unwrap();
        assert_eq!(changed, vec![("node-a".to_string(), NodeState::Lost)]);
        store.schedule().await.unwrap();
        let after = placement(store, "web").await;
        assert!(!after.contains_key("node-a"), "{after:?}");
        assert_eq!(after.values().sum::<usize>(), 2, "{after:?}");
        // Its heartbeat returns: ready again (its old instances are gone for good).
        store
            .agent_heartbeat("node-a", Resources::default())
            .await
            .unwrap();
        assert_eq!(store.node("node-a").await.unwrap().state, NodeState::Ready);
        // The store follows what the agent holds: reported states are written, instances
        // the agent does not hold go back to `created`, and nothing is written when all
        // agree.
        let node = after.keys().next().unwrap().clone();
        let ids: Vec<String> = store
            .assignments(&node)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.assignment.id)
            .collect();
        let held: Vec<zw_proto::agent::InstanceReport> = ids
            .iter()
            .map(|id| zw_proto::agent::InstanceReport {
                id: id.clone(),
                state: InstanceState::Started,
                reason: None,
                permanent: false,
            })
            .collect();
        assert_eq!(store.agent_sync(&node, &held).await.unwrap(), ids.len());
        assert_eq!(
            store.agent_sync(&node, &held).await.unwrap(),
            0,
            "no change, no write"
        );
        let routed = store.routing_state().await.unwrap();
        assert!(routed
            .endpoints
            .iter()
            .any(|e| e.instance.as_deref() == Some(ids[0].as_str())));
        assert_eq!(store.agent_sync(&node, &held[1..]).await.unwrap(), 1);
        let first = store.instance(&ids[0]).await.unwrap();
        assert_eq!(
            (first.state, first.reason.as_deref()),
            (InstanceState::Created, Some("not running on its node"))
        );
        // Assignments carry what the agent needs.
        let node = &node;
        let a = store.assignments(node).await.unwrap();
        assert!(a
            .iter()
            .any(|a| a.assignment.deployment == "web" && a.assignment.command == ["/bin/app"]));
    }
}

/// A domain belongs to one app: a second app's claim is refused with the owner's name, and
/// nothing of that apply is written; moving it is an explicit act. (`deploy other --domain
/// hello.localhost` once took 126 of 150 requests from `hello`, and `destroy other` then
/// deleted the domain from under it.)
#[tokio::test]
async fn a_domain_is_not_taken_from_its_app_without_asking() {
    for db in TestDb::all().await {
        let store = &Store::open(&db.url).await.unwrap();
        store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap();
        app(store, "hello", 1, &["eu"]).await;
        let claim = |name: &str, move_domains: bool| {
            apply_spec(name, &["eu"], &["other.test", "hello.test"], move_domains)
        };
        let before = store.counts().await.unwrap();
        let e = store.apply(claim("other", false)).await.unwrap_err();
        match &e {
            StoreError::Conflict(f) => {
                assert_eq!(f.field, "domains[1]");
                assert!(f.message.contains("belongs to deployment `hello`"), "{e}");
            }
            other => panic!("{:?}: want a conflict, got {other}", db.backend),
        }
        assert_eq!(
            store.counts().await.unwrap(),
            before,
            "{:?}: nothing written",
            db.backend
        );
        assert_eq!(
            store.domain("hello.test").await.unwrap().deployment,
            "hello"
        );

        // the owner itself may apply again with its domain
        app(store, "hello", 2, &["eu"]).await;
        // an explicit move
        let applied = store.apply(claim("other", true)).await.unwrap();
        assert_eq!(applied.domains.len(), 2);
        assert_eq!(
            store.domain("hello.test").await.unwrap().deployment,
            "other"
        );
        store.close().await;
    }
}

/// An apply of app `name` (its image named the same) in `regions` with `domains`.
fn apply_spec(name: &str, regions: &[&str], domains: &[&str], move_domains: bool) -> ApplySpec {
    ApplySpec {
        image: Some(NewImage {
            name: name.into(),
            command: vec!["/bin/app".into()],
            env: Default::default(),
            runtime: Runtime::Process,
            rootfs: None,
        }),
        deployment: NewDeployment {
            name: name.into(),
            image: name.into(),
            replicas: 1,
            regions: regions.iter().map(|r| r.to_string()).collect(),
            port: 8080,
            health_check: HealthCheckSpec::default(),
            strategy: None,
            max_surge: None,
        },
        domains: domains.iter().map(|d| d.to_string()).collect(),
        move_domains,
        rollout_timeout_secs: None,
    }
}

/// A domain that comes with a deploy is not routed until the operator's check proves it;
/// a failed check says why and routes nothing; the check proves it once; a moved domain
/// keeps its proof.
#[tokio::test]
async fn domains_of_a_deploy_wait_for_their_check() {
    for db in TestDb::all().await {
        let store = &Store::open(&db.url).await.unwrap();
        for (name, lb) in [("eu", Some("127.0.0.1:8000")), ("us", None)] {
            store
                .create_region(NewRegion {
                    name: name.into(),
                    balancer_address: lb.map(Into::into),
                    https_address: None,
                })
                .await
                .unwrap();
        }
        let spec = |name: &str, move_domains: bool| {
            apply_spec(name, &["eu", "us"], &["app.test"], move_domains)
        };
        let applied = store.apply(spec("app", false)).await.unwrap();
        assert_eq!(applied.domains[0].verified_at, None, "{:?}", db.backend);
        assert!(store.routing_state().await.unwrap().domains.is_empty());
        assert_eq!(
            store.unverified_domains().await.unwrap(),
            [zw_store::UnverifiedDomain {
                name: "app.test".into(),
                balancers: vec!["127.0.0.1:8000".into()],
            }],
            "{:?}: the check goes through the regions that have a balancer",
            db.backend
        );

        let before = *store.changes().borrow();
        store
            .domain_check_failed("app.test", "connection refused")
            .await
            .unwrap();
        let d = store.domain("app.test").await.unwrap();
        assert_eq!(d.check_error.as_deref(), Some("connection refused"));
        assert_eq!(d.verified_at, None);
        assert_eq!(
            *store.changes().borrow(),
            before,
            "a failed check changes no route"
        );

        store.domain_verified("app.test").await.unwrap();
        let d = store.domain("app.test").await.unwrap();
        assert!(d.verified_at.is_some());
        assert_eq!(d.check_error, None, "the proof clears the last error");
        assert_eq!(store.routing_state().await.unwrap().domains.len(), 1);
        assert!(store.unverified_domains().await.unwrap().is_empty());
        // a late failure report (a second operator's check) does not undo a proof
        store
            .domain_check_failed("app.test", "timeout")
            .await
            .unwrap();
        assert_eq!(store.domain("app.test").await.unwrap().check_error, None);

        // moved to another app, the domain stays proven
        store.apply(spec("other", true)).await.unwrap();
        let d = store.domain("app.test").await.unwrap();
        assert_eq!(
            (d.deployment.as_str(), d.verified_at.is_some()),
            ("other", true)
        );
        store.close().await;
    }
}

fn agent_hello<'a>(
    node_id: &'a str,
    address: &'a str,
    token: Option<&'a str>,
) -> zw_store::AgentHello<'a> {
    zw_store::AgentHello {
        node_id,
        hostname: "h",
        region: "eu",
        address,
        ingress_address: "127.0.0.1:7443",
        resources: Resources {
            cpu_millis: 1000,
            memory_mb: 1024,
            disk_mb: 1024,
        },
        drivers: &[],
        token,
    }
}

/// A join token enrolls one identity, and a hello never takes over a record that another
/// token (or the admin) made: an agent token's hello with another node's id once
/// overwrote that node's addresses and received its assignments.
#[tokio::test]
async fn join_tokens_speak_for_the_one_identity_they_enrolled() {
    for db in TestDb::all().await {
        let store = &Store::open(&db.url).await.unwrap();
        store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap();
        let a = store.create_join_token(TokenRole::Agent).await.unwrap();
        let b = store.create_join_token(TokenRole::Agent).await.unwrap();
        store
            .agent_hello(&agent_hello("node-a", "10.0.0.1", Some(&a.id)))
            .await
            .unwrap();
        // again, as itself: fine (a restart)
        store
            .agent_hello(&agent_hello("node-a", "10.0.0.1", Some(&a.id)))
            .await
            .unwrap();

        // token b cannot speak for node-a, and node-a's record is untouched
        let e = store
            .agent_hello(&agent_hello("node-a", "10.6.6.6", Some(&b.id)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Forbidden(m) if m.contains("another join token")),
            "{e}"
        );
        assert_eq!(store.node("node-a").await.unwrap().address, "10.0.0.1");
        // token a cannot enroll a second node
        let e = store
            .agent_hello(&agent_hello("node-c", "10.0.0.3", Some(&a.id)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Forbidden(m) if m.contains("enrolled `node-a`")),
            "{e}"
        );
        assert!(store.node("node-c").await.is_err(), "nothing written");
        // nor can either take a node the admin made through the API
        let by_hand = store
            .create_node(NewNode {
                hostname: "w".into(),
                address: "10.0.0.9".into(),
                region: "eu".into(),
                node_type: NodeType::Worker,
                state: None,
                resources: Resources {
                    cpu_millis: 1,
                    memory_mb: 1,
                    disk_mb: 1,
                },
            })
            .await
            .unwrap();
        let e = store
            .agent_hello(&agent_hello(&by_hand.id, "10.0.0.9", Some(&b.id)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Forbidden(m) if m.contains("the admin")),
            "{e}"
        );
        // b is still free for a node of its own
        store
            .agent_hello(&agent_hello("node-b", "10.0.0.2", Some(&b.id)))
            .await
            .unwrap();
        assert_eq!(
            store
                .authenticate(b.token.as_deref().unwrap())
                .await
                .unwrap()
                .unwrap(),
            Principal::Join {
                role: TokenRole::Agent,
                token: b.id.clone(),
                bound_to: Some("node-b".into())
            }
        );

        // edges likewise
        let e1 = store.create_join_token(TokenRole::Edge).await.unwrap();
        let e2 = store.create_join_token(TokenRole::Edge).await.unwrap();
        fn edge<'a>(id: &'a str, address: &'a str, token: &'a str) -> zw_store::EdgeHello<'a> {
            zw_store::EdgeHello {
                id,
                region: "eu",
                address,
                admin_address: None,
                version: None,
                hash: None,
                token: Some(token),
            }
        }
        store
            .edge_hello(&edge("edge-1", "10.0.1.1:80", &e1.id))
            .await
            .unwrap();
        let e = store
            .edge_hello(&edge("edge-1", "10.6.6.6:80", &e2.id))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Forbidden(_)), "{e}");
        assert_eq!(
            store.edge_proxy("edge-1").await.unwrap().address,
            "10.0.1.1:80"
        );
        store.close().await;
    }
}

/// Instances let go of (deployment deleted, or scaled down) stay listed as retiring
/// until their agent says they stopped, or no longer holds them: what `destroy` waits for.
#[tokio::test]
async fn let_go_instances_are_retiring_until_their_agent_reports_them_stopped() {
    use zw_proto::agent::InstanceReport;
    for db in TestDb::all().await {
        let store = &Store::open(&db.url).await.unwrap();
        store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap();
        agent_node(store, "node-a", "eu", 4096).await;
        app(store, "web", 2, &["eu"]).await;
        app(store, "api", 2, &["eu"]).await;
        store.schedule().await.unwrap();
        let report = |id: &str, state| InstanceReport {
            id: id.to_string(),
            state,
            reason: None,
            permanent: false,
        };
        let ids = |r: Vec<RetiringInstance>| r.into_iter().map(|i| i.id).collect::<Vec<_>>();

        assert!(store.retiring("web").await.unwrap().is_empty());
        store.delete_deployment("web").await.unwrap();
        let web = ids(store.retiring("web").await.unwrap());
        assert_eq!(web.len(), 2, "{:?}", db.backend);
        // one reported stopped; the other still held, stopping
        store
            .instance_report("node-a", &report(&web[0], InstanceState::Stopped))
            .await
            .unwrap();
        assert_eq!(
            ids(store.retiring("web").await.unwrap()),
            vec![web[1].clone()]
        );
        store
            .agent_sync("node-a", &[report(&web[1], InstanceState::Stopping)])
            .await
            .unwrap();
        assert_eq!(store.retiring("web").await.unwrap().len(), 1);
        // the agent no longer holds it: gone
        store.agent_sync("node-a", &[]).await.unwrap();
        assert!(store.retiring("web").await.unwrap().is_empty());

        // a scale-down lets go of one
        store
            .update_deployment(
                "api",
                DeploymentPatch {
                    replicas: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let s = store.schedule().await.unwrap();
        assert_eq!(ids(store.retiring("api").await.unwrap()), s.removed);
        store
            .instance_report("node-a", &report(&s.removed[0], InstanceState::Destroyed))
            .await
            .unwrap();
        assert!(store.retiring("api").await.unwrap().is_empty());
        store.close().await;
    }
}

/// HTTPS state: a lease is held by one holder until it expires or is released; orders are
/// counted; a stored certificate replaces the last error; HTTP-01 tokens travel in the
/// routing state, and stale ones expire — on both backends.
#[tokio::test]
async fn leases_certificates_and_challenges() {
    for db in TestDb::all().await {
        let store = Store::open(&db.url).await.unwrap();
        assert!(store
            .try_lease("certificate:a.test", "op-1", 60_000)
            .await
            .unwrap());
        assert!(
            !store
                .try_lease("certificate:a.test", "op-2", 60_000)
                .await
                .unwrap(),
            "{:?}: another holder's lease is not taken",
            db.backend
        );
        assert!(store
            .try_lease("certificate:a.test", "op-1", 60_000)
            .await
            .unwrap());
        store
            .release_lease("certificate:a.test", "op-1")
            .await
            .unwrap();
        assert!(store
            .try_lease("certificate:a.test", "op-2", 1)
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            store
                .try_lease("certificate:a.test", "op-1", 60_000)
                .await
                .unwrap(),
            "an expired lease is taken over"
        );

        store.tls_order_started("a.test").await.unwrap();
        store
            .tls_order_failed("a.test", "the CA said no")
            .await
            .unwrap();
        let c = &store.tls_certificates().await.unwrap()[0];
        assert_eq!((c.status.as_str(), c.orders), ("failed", 1));
        assert_eq!(c.last_error.as_deref(), Some("the CA said no"));
        store.tls_order_started("a.test").await.unwrap();
        store
            .put_tls_certificate(zw_store::IssuedTls {
                domain: "a.test",
                cert_pem: "CERT",
                sealed_key: "zwseal1:00",
                issuer: "CN=test",
                not_before: 1,
                not_after: 2,
            })
            .await
            .unwrap();
        let c = &store.tls_certificates().await.unwrap()[0];
        assert_eq!((c.status.as_str(), c.orders), ("valid", 2));
        assert_eq!(c.last_error, None);
        assert_eq!(c.sealed_key.as_deref(), Some("zwseal1:00"));
        store
            .tls_order_failed("a.test", "renewal failed")
            .await
            .unwrap();
        let c = &store.tls_certificates().await.unwrap()[0];
        assert_eq!(
            c.status, "valid",
            "a failed renewal keeps the certificate serving"
        );

        let before = *store.changes().borrow();
        store.put_acme_challenge("tok", "tok.thumb").await.unwrap();
        assert_ne!(
            *store.changes().borrow(),
            before,
            "a token is a routing change"
        );
        let state = store.routing_state().await.unwrap();
        assert_eq!(
            state.acme_challenges.get("tok").map(String::as_str),
            Some("tok.thumb")
        );
        store.expire_acme_challenges(3_600_000).await.unwrap();
        assert_eq!(
            store.routing_state().await.unwrap().acme_challenges.len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.expire_acme_challenges(1).await.unwrap();
        assert!(store
            .routing_state()
            .await
            .unwrap()
            .acme_challenges
            .is_empty());
        store
            .put_acme_challenge("tok2", "tok2.thumb")
            .await
            .unwrap();
        store.delete_acme_challenge("tok2").await.unwrap();
        assert!(store
            .routing_state()
            .await
            .unwrap()
            .acme_challenges
            .is_empty());
    }
}

/// Releases: one per change to what runs (not for scale or an unchanged apply), numbered,
/// described, carrying their secrets sealed as given, kept up to the configured number,
/// and a rollback needs a release that ran.
#[tokio::test]
async fn releases_are_made_numbered_kept_and_carry_their_secrets() {
    for db in TestDb::all().await {
        let store = &Store::open(&db.url).await.unwrap();
        store
            .create_region(NewRegion {
                name: "eu".into(),
                balancer_address: None,
                https_address: None,
            })
            .await
            .unwrap();
        let with_env = |v: &str| {
            let mut s = apply_spec("web", &["eu"], &[], false);
            if let Some(img) = s.image.as_mut() {
                img.env.insert("A".into(), v.into());
            }
            s
        };
        let first = store.apply(with_env("1")).await.unwrap();
        assert_eq!((first.release, first.deployment.release), (Some(1), 1));
        assert_eq!(
            store.apply(with_env("1")).await.unwrap().release,
            None,
            "nothing changed"
        );
        let second = store
            .apply_by(with_env("2"), "admin (ann@laptop)")
            .await
            .unwrap();
        assert_eq!(second.release, Some(2));
        let r2 = store.release("web", 2).await.unwrap();
        assert_eq!(r2.description, "changed: env A");
        assert_eq!(r2.created_by, "admin (ann@laptop)");
        assert_eq!(r2.status, ReleaseStatus::Rolling);
        assert_eq!(
            store.release("web", 1).await.unwrap().status,
            ReleaseStatus::Superseded,
            "replaced before it finished rolling"
        );
        // Scaling is not a release.
        let d = store
            .update_deployment(
                "web",
                DeploymentPatch {
                    replicas: Some(3),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(d.release, 2);
        // Secrets: given sealed (the operator seals), listed by name only.
        let sealed = "zwseal1.not-a-real-ciphertext";
        let r3 = store
            .change_secrets(
                "web",
                [("TOKEN".to_string(), sealed.to_string())].into(),
                &[],
                "admin",
            )
            .await
            .unwrap();
        assert_eq!(
            (r3.version, r3.secrets.clone()),
            (3, vec!["TOKEN".to_string()])
        );
        assert_eq!(r3.description, "changed: secret TOKEN set");
        assert!(!serde_json::to_string(&r3).unwrap().contains(sealed));
        let names: Vec<String> = store
            .secrets("web")
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["TOKEN"]);
        // An apply keeps the secrets.
        let r4 = store.apply(with_env("3")).await.unwrap().release.unwrap();
        assert_eq!(store.release("web", r4).await.unwrap().secrets, ["TOKEN"]);
        match store
            .change_secrets("web", Default::default(), &["NOPE".into()], "admin")
            .await
        {
            Err(StoreError::Invalid(f)) => assert_eq!(f.field, "unset"),
            other => panic!("{other:?}"),
        }
        match store
            .change_secrets("web", [("1BAD".into(), "x".into())].into(), &[], "admin")
            .await
        {
            Err(StoreError::Invalid(f)) => assert_eq!(f.field, "set.1BAD"),
            other => panic!("{other:?}"),
        }
        // No release has run yet: nothing to roll back to by default; a named one works.
        assert!(matches!(
            store.rollback("web", None, "admin").await,
            Err(StoreError::Conflict(_))
        ));
        let back = store.rollback("web", Some(1), "admin").await.unwrap();
        assert_eq!(
            (back.version, back.description.as_str()),
            (5, "rollback to v1")
        );
        assert_eq!(back.env.get("A").map(String::as_str), Some("1"));
        assert!(back.secrets.is_empty(), "v1's secrets: none");
        // Kept: the newest three.
        store.set_keep_releases(3).await.unwrap();
        for v in 10..16 {
            store.apply(with_env(&v.to_string())).await.unwrap();
        }
        let versions: Vec<u64> = store
            .releases("web")
            .await
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, [11, 10, 9], "newest first, three kept");
        assert!(matches!(
            store.release("web", 2).await,
            Err(StoreError::NotFound { .. })
        ));
        store.delete_deployment("web").await.unwrap();
        assert!(store.releases("web").await.is_err());
    }
}
