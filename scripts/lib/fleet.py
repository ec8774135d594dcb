#!/usr/bin/env python3
"""The fleet simulation behind scripts/fleet.sh (see its header for usage).

N nodes, each a fake-stats-server process with its own users and traffic
pattern and a real boxmeter-collector, into one throwaway PostgreSQL 15
(optionally through a real PgBouncer in transaction pooling mode). After a
warm-up (every node committed once) it measures for --seconds, then stops
the traffic, waits for the collectors to commit the rest and compares every
node's counters in the database with its fake's, exactly. Everything runs on
127.0.0.1 and in one temporary directory, which is removed, with every
process it started, however the run ends.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PG_BIN = "/usr/lib/postgresql/15/bin"
PGBOUNCER = "/usr/sbin/pgbouncer"
COMMIT_LINE = re.compile(
    rb"committed (\d+) counters \(commit (\d+)\) in ([0-9.]+) ms")


def fail(message):
    raise SystemExit("fleet: FAILED: " + message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, condition, timeout, step=0.2):
    """Polls condition() until true; fails naming `what` after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(step)


def cpu_seconds(pid, children=False):
    """utime+stime (+ reaped children's) of pid from /proc, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def child_pids(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil
    return sorted_values[int(rank) - 1]


class Fleet:
    def __init__(self, args):
        self.args = args
        self.processes = []  # everything started, stopped in reverse
        self.work = tempfile.mkdtemp(prefix="boxmeter-fleet-")
        self.as_pg = []
        if os.geteuid() == 0:
            shutil.chown(self.work, "postgres", "postgres")
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        self.pg_port = free_port()
        self.pg_started = False
        self.fakes = []
        self.collectors = []
        self.bouncer = None
        self.bouncer_port = None
        self.samples = []
        self.lock_events = set()  # wait_event of the Lock waits seen

    # ---- PostgreSQL -------------------------------------------------------
    def psql(self, sql, port=None, database="fleet", check=True,
             header=False):
        result = subprocess.run(
            [f"{PG_BIN}/psql", "-X", "-A", "-q", "-v", "ON_ERROR_STOP=1",
             "-P", "footer=off"] + ([] if header else ["-t"]) + [
             "-h", "127.0.0.1", "-p", str(port or self.pg_port),
             "-U", "postgres", "-d", database, "-c", sql],
            capture_output=True, text=True)
        if check and result.returncode != 0:
            fail(f"psql ({sql[:60]}...): {result.stderr.strip()}")
        return result.stdout.strip()

    def start_postgres(self):
        data = f"{self.work}/data"
        subprocess.run(self.as_pg + [
            f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, stdout=subprocess.DEVNULL)
        connections = self.args.max_connections
        options = (f"-c listen_addresses=127.0.0.1 -p {self.pg_port} "
                   f"-c unix_socket_directories={self.work} "
                   f"-c max_connections={connections} "
                   f"-c fsync={'on' if self.args.fsync else 'off'} "
                   # What the commits spend their time on, for the report.
                   "-c shared_preload_libraries=pg_stat_statements "
                   "-c pg_stat_statements.track=top "
                   "-c pg_stat_statements.max=20000")
        subprocess.run(self.as_pg + [
            f"{PG_BIN}/pg_ctl", "-D", data, "-l", f"{self.work}/pg.log", "-w",
            "-o", options, "start"], check=True, stdout=subprocess.DEVNULL)
        self.pg_started = True
        self.psql("CREATE DATABASE fleet", database="postgres")
        self.psql("CREATE EXTENSION pg_stat_statements")
        with open(f"{data}/postmaster.pid") as f:
            self.postmaster = int(f.readline())

    def postgres_cpu(self):
        """CPU seconds of the postmaster and all its processes, ever."""
        total = cpu_seconds(self.postmaster, children=True)
        for pid in child_pids(self.postmaster):
            total += cpu_seconds(pid)
        return total

    def start_bouncer(self):
        self.bouncer_port = free_port()
        with open(f"{self.work}/userlist.txt", "w") as f:
            f.write('"postgres" ""\n')
        with open(f"{self.work}/pgbouncer.ini", "w") as f:
            f.write(
                "[databases]\n"
                f"* = host=127.0.0.1 port={self.pg_port}\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                f"listen_port = {self.bouncer_port}\n"
                "unix_socket_dir =\n"
                "auth_type = trust\n"
                f"auth_file = {self.work}/userlist.txt\n"
                "admin_users = postgres\n"
                "pool_mode = transaction\n"
                f"max_client_conn = {self.args.nodes + 20}\n"
                f"default_pool_size = {self.args.pool_size}\n"
                f"max_db_connections = {self.args.pool_size}\n"
                "min_pool_size = 0\n"
                "reserve_pool_size = 0\n"
                f"logfile = {self.work}/pgbouncer.log\n")
        if self.as_pg:
            for name in ("userlist.txt", "pgbouncer.ini"):
                shutil.chown(f"{self.work}/{name}", "postgres", "postgres")
        self.bouncer = subprocess.Popen(
            self.as_pg + [PGBOUNCER, f"{self.work}/pgbouncer.ini"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(self.bouncer)

        def accepts():
            if self.bouncer.poll() is not None:
                fail("pgbouncer exited; see its log:\n" +
                     open(f"{self.work}/pgbouncer.log").read())
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.bouncer_port)) == 0
        wait_until("pgbouncer accepting connections", accepts, 30)

    def bouncer_pools(self):
        """(cl_waiting, maxwait seconds) summed over pgbouncer's pools."""
        lines = self.psql("SHOW POOLS", port=self.bouncer_port,
                          database="pgbouncer", check=False,
                          header=True).splitlines()
        waiting, maxwait = 0, 0.0
        if not lines:
            return waiting, maxwait
        names = lines[0].split("|")
        for line in lines[1:]:
            row = dict(zip(names, line.split("|")))
            if row.get("database") == "fleet":
                waiting += int(row["cl_waiting"])
                maxwait = max(maxwait, int(row["maxwait"]) +
                              int(row["maxwait_us"]) / 1e6)
        return waiting, maxwait

    # ---- nodes ------------------------------------------------------------
    def start_fake(self, index):
        fake = subprocess.Popen(
            [self.args.fake, "--listen", "127.0.0.1:0"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self.processes.append(fake)
        first = fake.stdout.readline().split()
        if len(first) != 2 or first[0] != "listening":
            fail(f"fake-stats-server of node {index} said {first!r}")
        fake.address = first[1]
        self.fakes.append(fake)
        self.fake_command(index, f"users {self.args.users}")

    def fake_command(self, index, command):
        fake = self.fakes[index]
        fake.stdin.write(command + "\n")
        reply = fake.stdout.readline().strip()
        if reply != "ok":
            fail(f"fake-stats-server of node {index}: {command} -> {reply!r}")

    def node_name(self, index):
        return f"fleet-{index:04d}"

    def write_config(self, index, url):
        path = f"{self.work}/node{index:04d}.yaml"
        with open(path, "w") as f:
            f.write(f"node: {self.node_name(index)}\n"
                    "source:\n"
                    f"  address: \"{self.fakes[index].address}\"\n"
                    "  timeout: 30s\n"
                    "database:\n"
                    f"  url: \"{url}\"\n"
                    "poll:\n"
                    f"  interval: {self.args.interval}s\n"
                    "log:\n"
                    "  level: debug\n"
                    "control:\n"
                    f"  socket: {self.work}/node{index:04d}.sock\n"
                    # As deployed: the hook makes every commit read the
                    # node's users fingerprint (`true` stands in for
                    # boxmeter-gen, which runs only when it changes).
                    + ("hooks:\n  on_users_changed: \"true\"\n"
                       if self.args.hook == "on" else ""))
        return path

    def database_url(self):
        port = self.bouncer_port if self.args.pgbouncer else self.pg_port
        return f"postgresql://postgres@127.0.0.1:{port}/fleet"

    def migrate(self):
        config = self.write_config(0, f"postgresql://postgres@127.0.0.1:"
                                      f"{self.pg_port}/fleet")
        result = subprocess.run([self.args.collector, "--config", config,
                                 "--migrate"], capture_output=True, text=True,
                                env=self.collector_env())
        if result.returncode != 0:
            fail(f"boxmeter-collector --migrate: {result.stderr.strip()}")
        # The users every node's sing-box accepts, as boxmeter-gen reads
        # them: the fakes' user names, each linked to every node's inbound,
        # so that each commit's users fingerprint has a node's worth to hash.
        self.psql(
            "INSERT INTO users (name, uuid) SELECT format('u%s', "
            "lpad(i::text, 6, '0')), gen_random_uuid() "
            f"FROM generate_series(0, {self.args.users - 1}) i;"
            "INSERT INTO inbounds (node, tag, type, listen_port) "
            "SELECT format('fleet-%s', lpad(n::text, 4, '0')), 'vless-in', "
            f"'vless', 443 FROM generate_series(0, {self.args.nodes - 1}) n;"
            "INSERT INTO inbound_users SELECT i.id, u.id "
            "FROM inbounds i CROSS JOIN users u")

    def collector_env(self):
        env = dict(os.environ)
        for name in ("BOXMETER_DATABASE_URL", "BOXMETER_DATABASE_URL_FILE",
                     "BOXMETER_CONFIG", "NOTIFY_SOCKET", "PGPASSWORD",
                     "PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
            env.pop(name, None)
        return env

    def start_collector(self, index):
        config = self.write_config(index, self.database_url())
        log = open(f"{self.work}/node{index:04d}.log", "wb")
        collector = subprocess.Popen(
            [self.args.collector, "--config", config], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log, env=self.collector_env())
        log.close()
        collector.log = f"{self.work}/node{index:04d}.log"
        self.processes.append(collector)
        self.collectors.append(collector)

    def check_collectors_alive(self):
        for index, collector in enumerate(self.collectors):
            if collector.poll() is not None:
                tail = open(collector.log, errors="replace").read()[-2000:]
                fail(f"the collector of {self.node_name(index)} exited with "
                     f"{collector.returncode}; its log ends:\n{tail}")

    def committed_nodes(self):
        return int(self.psql(
            "SELECT count(*) FROM nodes WHERE commit_seq > 0", check=False)
            or 0)

    # ---- traffic ----------------------------------------------------------
    def active_users(self, index):
        """This node's active users per poll: the configured percentage on
        average over every five nodes, 80% to 120% of it per node."""
        base = self.args.users * self.args.active_percent / 100
        return int(round(base * (0.8 + 0.1 * (index % 5))))

    def bytes_per_user(self, index):
        """Each node its own amount per active user and poll."""
        return 10_000 + 7_919 * index

    def traffic_round(self, round_start):
        """One interval of traffic: node i at i/N of the interval."""
        n = self.args.nodes
        for index in range(n):
            at = round_start + self.args.interval * index / n
            pause = at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.fake_command(index, f"traffic {self.active_users(index)} "
                                     f"{self.bytes_per_user(index)}")

    # ---- sampling ---------------------------------------------------------
    def sample_loop(self, stop):
        query = ("SELECT count(*) FILTER (WHERE backend_type = 'client backend'"
                 " AND datname = 'fleet'),"
                 " count(*) FILTER (WHERE wait_event_type = 'Lock'),"
                 " count(*) FILTER (WHERE wait_event_type = 'LWLock'),"
                 " count(*) FILTER (WHERE state = 'active'"
                 " AND backend_type = 'client backend' AND datname = 'fleet'),"
                 " coalesce(string_agg(DISTINCT wait_event, ',') FILTER"
                 " (WHERE wait_event_type = 'Lock'), '')"
                 " FROM pg_stat_activity WHERE application_name <> 'psql'")
        while not stop.wait(1.0):
            row = self.psql(query, check=False).split("|")
            if len(row) != 5:
                continue
            self.lock_events.update(e for e in row.pop().split(",") if e)
            sample = [int(v) for v in row]
            if self.args.pgbouncer:
                sample += list(self.bouncer_pools())
            self.samples.append(sample)

    def measure_point(self):
        return {
            "time": time.monotonic(),
            "pg_cpu": self.postgres_cpu(),
            "collector_cpu": sum(cpu_seconds(c.pid) for c in self.collectors),
            "fake_cpu": sum(cpu_seconds(f.pid) for f in self.fakes),
            "lsn": self.psql("SELECT pg_current_wal_lsn()"),
            "sizes": self.sizes(),
            "log_offsets": [os.path.getsize(c.log) for c in self.collectors],
            "load": open("/proc/loadavg").read().split()[:3],
        }

    def sizes(self):
        out = self.psql(
            "SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid)"
            "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            "   AND c.relname IN ('nodes', 'counters')"
            " UNION ALL "
            # Partitioned by day (0016): the sum of its partitions (the
            # table itself before).
            "SELECT 'counter_hourly', sum(pg_table_size(relid))::bigint,"
            "       sum(pg_indexes_size(relid))::bigint"
            "  FROM (SELECT relid FROM pg_partition_tree('counter_hourly')"
            "        UNION SELECT 'counter_hourly'::regclass) AS tree"
            " UNION ALL "
            # Each commit creates and drops a temporary table: catalog rows.
            "SELECT relname, pg_table_size(oid), pg_indexes_size(oid)"
            "  FROM pg_class WHERE oid IN ('pg_class'::regclass,"
            "                              'pg_attribute'::regclass)"
            " ORDER BY 1")
        return {cols[0]: (int(cols[1]), int(cols[2]))
                for cols in (line.split("|") for line in out.splitlines())}

    # ---- the end ----------------------------------------------------------
    def verify(self):
        """Fails unless every node's counters in the database equal its
        fake's, waiting up to 3 intervals + 60 s for the last commits."""
        combined = f"{self.work}/expected.tsv"
        with open(combined, "w") as out:
            for index in range(self.args.nodes):
                dump = f"{self.work}/fake{index:04d}.tsv"
                self.fake_command(index, f"dump {dump}")
                with open(dump) as f:
                    for line in f:
                        out.write(f"{self.node_name(index)}\t{line}")
        if self.as_pg:
            shutil.chown(combined, "postgres", "postgres")
        self.psql("CREATE UNLOGGED TABLE fleet_expected (node text, counter "
                  "text, value bigint)")
        self.psql(f"COPY fleet_expected FROM '{combined}'")
        compare = """
          WITH expected AS (
            SELECT node, split_part(counter, '>>>', 1) AS kind,
                   split_part(counter, '>>>', 2) AS name,
                   sum(value) FILTER (WHERE counter LIKE '%>>>uplink')
                     AS uplink,
                   sum(value) FILTER (WHERE counter LIKE '%>>>downlink')
                     AS downlink
              FROM fleet_expected GROUP BY 1, 2, 3),
          wrong AS (
            SELECT coalesce(e.node, c.node) AS node,
                   coalesce(e.kind, c.kind) || ' ' || coalesce(e.name, c.name)
                     || ': fake ' || coalesce(e.uplink, 0) || '/' ||
                     coalesce(e.downlink, 0) || ', database ' ||
                     coalesce(c.uplink, 0) || '/' || coalesce(c.downlink, 0)
                     AS what
              FROM expected e
              FULL JOIN (SELECT * FROM counters
                          WHERE node LIKE 'fleet-%') c
                ON c.node = e.node AND c.kind = e.kind AND c.name = e.name
             WHERE coalesce(e.uplink, 0) <> coalesce(c.uplink, 0)
                OR coalesce(e.downlink, 0) <> coalesce(c.downlink, 0))
          SELECT node || ' ' || what FROM wrong ORDER BY 1 LIMIT 20"""
        deadline = time.monotonic() + 3 * self.args.interval + 60
        while True:
            self.check_collectors_alive()
            wrong = self.psql(compare)
            if not wrong:
                break
            if time.monotonic() > deadline:
                counts = self.psql(
                    "SELECT node || ' ' || commit_seq FROM nodes ORDER BY 1")
                fail("these counters differ between the fakes and the "
                     f"database (first 20):\n{wrong}\ncommit_seq per node:\n"
                     f"{counts}")
            time.sleep(1)
        totals = self.psql(
            "SELECT count(DISTINCT node), count(*), sum(value) "
            "FROM fleet_expected").split("|")
        print(f"fleet: exact: all {totals[0]} nodes' {totals[1]} counters "
              f"({int(totals[2]):,} bytes) in the database equal their "
              "fakes'")

    def commit_latencies(self, begin, end):
        """Per node: the commit durations (ms) logged between two points."""
        per_node = []
        for index, collector in enumerate(self.collectors):
            with open(collector.log, "rb") as f:
                f.seek(begin["log_offsets"][index])
                text = f.read(end["log_offsets"][index] -
                              begin["log_offsets"][index])
            per_node.append(sorted(float(m.group(3))
                                   for m in COMMIT_LINE.finditer(text)))
        return per_node

    def report(self, begin, end):
        a = self.args
        seconds = end["time"] - begin["time"]
        print(f"\nfleet: {a.nodes} nodes x {a.users} users, "
              f"{a.active_percent}% active per poll, every {a.interval} s, "
              f"measured {seconds:.0f} s, "
              + (f"through PgBouncer (transaction pooling, pool "
                 f"{a.pool_size})" if a.pgbouncer else "direct") +
              f", fsync {'on' if a.fsync else 'off'}, users hook {a.hook}")
        print(f"load average at start {' '.join(begin['load'])}, "
              f"at end {' '.join(end['load'])} ({os.cpu_count()} CPUs)")
        per_node = self.commit_latencies(begin, end)
        print("\ncommit latency per node, ms (commits, median, p99, max):")
        for index, values in enumerate(per_node):
            if values:
                print(f"  {self.node_name(index)} {len(values):4d} "
                      f"{statistics.median(values):9.2f} "
                      f"{percentile(values, 99):9.2f} {values[-1]:9.2f}")
            else:
                print(f"  {self.node_name(index)}    0 (no commit logged)")
        everything = sorted(v for values in per_node for v in values)
        if not everything:
            fail("no commit was logged during the measurement")
        silent = [self.node_name(i) for i, v in enumerate(per_node) if not v]
        print(f"\noverall: {len(everything)} commits, median "
              f"{statistics.median(everything):.2f} ms, p99 "
              f"{percentile(everything, 99):.2f} ms, max "
              f"{everything[-1]:.2f} ms"
              + (f"; nodes without a commit: {', '.join(silent)}"
                 if silent else ""))
        rate = len(everything) / seconds
        print(f"commits per second: {rate:.1f}")
        for key, name in (("pg_cpu", "PostgreSQL"),
                          ("collector_cpu", "collectors (all)"),
                          ("fake_cpu", "fakes (all)")):
            used = (end[key] - begin[key]) / seconds
            print(f"CPU {name}: {100 * used:.1f}% of one core")
        wal = int(self.psql(f"SELECT pg_wal_lsn_diff('{end['lsn']}', "
                            f"'{begin['lsn']}')"))
        print(f"WAL: {wal / seconds / 1024:.1f} KiB/s "
              f"({wal / max(1, len(everything)) / 1024:.1f} KiB per commit)")
        if self.samples:
            conns = max(s[0] for s in self.samples)
            lock_samples = sum(1 for s in self.samples if s[1] > 0)
            print(f"connections to the database: at most {conns} "
                  f"(max_connections {a.max_connections}); "
                  f"at most {max(s[3] for s in self.samples)} active at once")
            print(f"lock waits in pg_stat_activity: {lock_samples} of "
                  f"{len(self.samples)} one-second samples, at most "
                  f"{max(s[1] for s in self.samples)} waiting at once; "
                  f"LWLock waits at most {max(s[2] for s in self.samples)}"
                  + (f"; Lock waits were on: {', '.join(sorted(self.lock_events))}"
                     if self.lock_events else ""))
            if a.pgbouncer:
                print(f"PgBouncer: at most {max(s[4] for s in self.samples)} "
                      "clients waiting for a server connection, longest "
                      f"wait {max(s[5] for s in self.samples):.3f} s")
        print("statements by PostgreSQL time during the measurement "
              "(share, calls, mean ms, statement):")
        for line in self.psql(
                # By text: a statement on the commit's temporary table has
                # a new query id in every commit (the table's OID is new).
                "SELECT 100 * sum(total_exec_time) / sum(sum(total_exec_time))"
                " OVER (), sum(calls), "
                "sum(total_exec_time) / sum(calls), "
                "regexp_replace(left(query, 200), '\\s+', ' ', 'g') "
                "FROM pg_stat_statements WHERE calls > 0 GROUP BY query "
                "ORDER BY 1 DESC LIMIT 6").splitlines():
            share, calls, mean, query = line.split("|", 3)
            print(f"  {float(share):5.1f}% "
                  f"{int(calls):7d} {float(mean):9.2f}  {query[:110]}")
        print("growth during the measurement (table + indexes):")
        for table in sorted(end["sizes"]):
            t0, i0 = begin["sizes"].get(table, (0, 0))
            t1, i1 = end["sizes"][table]
            print(f"  {table:15s} {t0 / 2**20:8.2f} -> {t1 / 2**20:8.2f} MiB"
                  f" table, {i0 / 2**20:8.2f} -> {i1 / 2**20:8.2f} MiB indexes"
                  f" ({(t1 + i1 - t0 - i0) / seconds / 1024:.1f} KiB/s)")

    def run(self):
        a = self.args
        print(f"fleet: {a.nodes} nodes, {a.users} users each, "
              f"{a.active_percent}% active per poll, interval {a.interval} s, "
              f"{a.seconds} s measured"
              + (f", through PgBouncer (pool {a.pool_size})"
                 if a.pgbouncer else "") + f"; work dir {self.work}",
              flush=True)
        self.start_postgres()
        if a.pgbouncer:
            self.start_bouncer()
        for index in range(a.nodes):
            self.start_fake(index)
        self.migrate()
        for index in range(a.nodes):
            self.start_collector(index)
        stop_sampling = threading.Event()
        sampler = threading.Thread(target=self.sample_loop,
                                   args=(stop_sampling,), daemon=True)
        # Warm-up: traffic until every node has committed once.
        started = time.monotonic()
        warmup_deadline = started + 120 + a.nodes
        while self.committed_nodes() < a.nodes:
            self.check_collectors_alive()
            if time.monotonic() > warmup_deadline:
                fail(f"only {self.committed_nodes()} of {a.nodes} nodes "
                     "committed during the warm-up")
            self.traffic_round(time.monotonic())
        print(f"fleet: warm-up done in {time.monotonic() - started:.0f} s "
              "(every node committed); measuring", flush=True)
        # Measure whole rounds, then one more interval for the commits of the
        # last round's traffic.
        begin = self.measure_point()
        self.psql("SELECT pg_stat_statements_reset()")
        sampler.start()
        round_start = begin["time"]
        while time.monotonic() - begin["time"] < a.seconds:
            self.traffic_round(round_start)
            round_start += a.interval
            self.check_collectors_alive()
        end = self.measure_point()
        stop_sampling.set()
        sampler.join()
        self.report(begin, end)
        print("\nfleet: traffic stopped; waiting for the last commits",
              flush=True)
        self.verify()

    def cleanup(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 15
        for process in reversed(self.processes):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.pg_started:
            subprocess.run(self.as_pg + [
                f"{PG_BIN}/pg_ctl", "-D", f"{self.work}/data", "-m",
                "immediate", "-w", "stop"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
        if self.args.keep:
            print(f"fleet: kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(prog="scripts/fleet.sh")
    parser.add_argument("--collector", required=True)
    parser.add_argument("--fake", required=True)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--active-percent", type=float, default=10)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--pgbouncer", action="store_true")
    parser.add_argument("--pool-size", type=int)
    parser.add_argument("--max-connections", type=int)
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    parser.add_argument("--hook", choices=("on", "off"), default="on")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    args.fsync = args.fsync == "on"
    if args.nodes < 1 or args.users < 1 or args.interval < 1 or \
            args.seconds < args.interval or not 0 < args.active_percent <= 100:
        parser.error("want --nodes >= 1, --users >= 1, --interval >= 1, "
                     "--seconds >= --interval and 0 < --active-percent <= 100")
    if args.pool_size is None:
        args.pool_size = max(1, min(10, args.nodes - 1))
    if args.max_connections is None:
        # Direct: one connection per collector, and room for the script's
        # own. Through PgBouncer PostgreSQL's default of 100 stays.
        args.max_connections = 100 if args.pgbouncer else max(
            100, args.nodes + 20)
    fleet = Fleet(args)

    def on_signal(signum, _frame):
        raise SystemExit(f"fleet: stopped by signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        fleet.run()
    finally:
        fleet.cleanup()


if __name__ == "__main__":
    main()
