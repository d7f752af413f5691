#!/usr/bin/env node
// node-cluster-hello.js: the Node.js `cluster` baseline of scripts/handoff-bench.py.
//
// Usage: node scripts/node-cluster-hello.js --listen 127.0.0.1:PORT [--workers 2] [--sched rr|none]
//
// The primary process forks N workers. With --sched rr (the default, cluster.SCHED_RR) the
// primary accepts every connection and hands it round-robin to a worker over the IPC channel
// (the Node equivalent of an acceptor handing connections to workers); with --sched none
// (cluster.SCHED_NONE) the primary passes the listening socket itself to the workers, which
// all accept on it and the kernel picks which one wakes (no handoff). Each worker answers every
// HTTP request 200 with the body "hello from sockdup\n", with the same headers in the same
// order as `sockdup worker --app hello` and the sockdup-loadtest servers: Date, Server,
// Content-Type, Content-Length, and "Connection: close" when the request asked for it (the
// response to a close request is byte for byte the same). Keep-alive is honoured (Node then
// adds its own "Connection: keep-alive" and "Keep-Alive" headers).
// Workers are not restarted; the primary exits when one dies, and workers exit with it.
'use strict';

const cluster = require('node:cluster');
const http = require('node:http');

function parseArgs(argv) {
  const opts = { host: null, port: null, workers: 2, sched: 'rr' };
  for (let i = 0; i < argv.length; i++) {
    const eq = argv[i].indexOf('=');
    const name = eq < 0 ? argv[i] : argv[i].slice(0, eq);
    const next = () => (eq < 0 ? argv[++i] : argv[i].slice(eq + 1));
    if (name === '--listen') {
      const v = next() || '';
      const at = v.lastIndexOf(':');
      opts.host = v.slice(0, at).replace(/^\[|\]$/g, '');
      opts.port = Number(v.slice(at + 1));
    } else if (name === '--workers') {
      opts.workers = Number(next());
    } else if (name === '--sched') {
      opts.sched = next();
    } else {
      throw new Error(`unknown argument ${name}`);
    }
  }
  if (
    !opts.host ||
    !Number.isInteger(opts.port) ||
    !(opts.workers >= 1) ||
    !['rr', 'none'].includes(opts.sched)
  ) {
    throw new Error('usage: node-cluster-hello.js --listen HOST:PORT [--workers N] [--sched rr|none]');
  }
  return opts;
}

const BODY = 'hello from sockdup\n';
const LENGTH = String(Buffer.byteLength(BODY));

// The Date header, formatted once a second (as Node's own Date header is).
let dateSecond = -1;
let dateText = '';
function httpDate() {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

if (cluster.isPrimary) {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`node-cluster-hello: ${e.message}`);
    process.exit(2);
  }
  // Decided by the primary, before the first fork: it makes the listening handle.
  cluster.schedulingPolicy = opts.sched === 'none' ? cluster.SCHED_NONE : cluster.SCHED_RR;
  process.env.HELLO_HOST = opts.host;
  process.env.HELLO_PORT = String(opts.port);
  for (let i = 0; i < opts.workers; i++) cluster.fork();
  const killAll = () => {
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
  };
  cluster.on('exit', (worker, code, signal) => {
    console.error(`node-cluster-hello: worker ${worker.process.pid} exited (${signal || code})`);
    killAll();
    process.exit(1);
  });
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      killAll();
      process.exit(0);
    });
  }
} else {
  const server = http.createServer((req, res) => {
    // Node's own Date header would come after these: ours keeps sockdup's order.
    res.sendDate = false;
    // Node adds "Connection: close" itself when the request asked for it (and
    // "Connection: keep-alive" plus "Keep-Alive: timeout=5" otherwise).
    res.writeHead(200, {
      Date: httpDate(),
      Server: 'sockdup',
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': LENGTH,
    });
    res.end(BODY);
  });
  // Backlog 128, as `sockdup serve` and the sockdup-loadtest servers.
  server.listen(Number(process.env.HELLO_PORT), process.env.HELLO_HOST, 128);
  // The IPC channel closes when the primary dies: go with it.
  process.on('disconnect', () => process.exit(0));
}
