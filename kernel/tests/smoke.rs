use keel_kernel::head::TaskStateKind;
use keel_kernel::proto::{Arg, DriverToHead, Labels};
use keel_kernel::testkit::{task, Cluster};
use keel_kernel::*;

fn cluster(nodes: usize, cpus: u64) -> Cluster {
    let mut c = Cluster::new(HeadConfig::default(), NodeConfig::default(), Duration::from_millis(1));
    for _ in 0..nodes {
        c.add_host(ResourceSet::cpus(cpus), Labels::new());
    }
    c.run_for(Duration::from_millis(10));
    c.check_invariants();
    c
}

#[test]
fn independent_tasks_all_finish_and_results_reach_the_driver() {
    let mut c = cluster(3, 2);
    let job = c.start_job("smoke");
    let mut outs = Vec::new();
    for i in 0..10 {
        let spec = task(job, i, "ms=5");
        outs.extend(spec.return_ids());
        c.submit(job, spec).unwrap();
    }
    c.driver(job, DriverToHead::Subscribe(outs.clone())).unwrap();
    c.run_for(Duration::from_millis(200));
    c.check_invariants();
    for o in &outs {
        assert!(matches!(c.fetch(job, *o), Some(Ok(_))), "{o} not ready");
    }
    assert_eq!(c.head.stats().tasks_finished, 10);
}

#[test]
fn a_chain_runs_in_order_and_big_values_move_between_nodes() {
    let mut c = cluster(2, 1);
    let job = c.start_job("chain");
    let mut prev: Option<ObjectId> = None;
    let mut last = None;
    for i in 0..5 {
        let mut spec = task(job, i, "ms=2;bytes=200000");
        if let Some(p) = prev {
            spec.args.push(Arg::Ref(p));
        }
        let out = spec.return_ids().next().unwrap();
        c.submit(job, spec).unwrap();
        prev = Some(out);
        last = Some(out);
        c.check_invariants();
    }
    c.driver(job, DriverToHead::Subscribe(vec![last.unwrap()])).unwrap();
    c.run_for(Duration::from_millis(500));
    c.check_invariants();
    let bytes = c.fetch(job, last.unwrap()).expect("ready").expect("ok");
    assert_eq!(bytes.len(), 200000);
}

#[test]
fn a_lost_node_is_detected_and_its_task_retried_elsewhere() {
    let mut c = cluster(2, 1);
    let job = c.start_job("retry");
    let spec = task(job, 0, "ms=3000");
    let t = spec.task;
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    c.run_for(Duration::from_millis(100));
    let node = c.head.task_node(t).expect("running");
    let host = c.host_of(node).unwrap();
    c.crash_host(host);
    c.run_for(Duration::from_secs(10));
    c.check_invariants();
    assert_eq!(c.head.task_attempt(t), Some(1));
    assert!(matches!(c.fetch(job, out), Some(Ok(_))));
    assert_eq!(c.head.task_state(t), Some(TaskStateKind::Finished));
}

#[test]
fn a_lost_object_is_rebuilt_with_identical_bytes() {
    let mut c = cluster(2, 1);
    let job = c.start_job("rebuild");
    let spec = task(job, 0, "ms=1;bytes=300000");
    let out = spec.return_ids().next().unwrap();
    c.submit(job, spec).unwrap();
    c.driver(job, DriverToHead::Subscribe(vec![out])).unwrap();
    c.run_for(Duration::from_millis(100));
    let original = c.fetch(job, out).unwrap().unwrap();
    let node = c.head.object_locations(out)[0];
    c.crash_host(c.host_of(node).unwrap());
    c.run_for(Duration::from_secs(10));
    c.check_invariants();
    assert_eq!(c.head.stats().reconstructions, 1);
    let locs = c.head.object_locations(out);
    assert_eq!(locs.len(), 1);
    assert_ne!(locs[0], node);
    let h = c.host_of(locs[0]).unwrap();
    assert_eq!(c.hosts[h].store.get(&out), Some(&original));
}
