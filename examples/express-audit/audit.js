'use strict';
// Request auditing for Express through the OpenTelemetry JS logs SDK, the
// counterpart of otel_audit.web in Python: one audit record per request, with
// the same attribute names, sent over OTLP/HTTP to `otel-audit serve`, which
// seals and stores it. See docs/web.md ("Node.js").
//
//   const audit = require('./audit');
//   loggerProvider = new LoggerProvider({ resource, processors: [
//       new audit.AuditContextProcessor(),          // first: fills audit records from the audit context
//       new BatchLogRecordProcessor({ exporter, ... }) ] });
//   app.use(audit.middleware({ logger: loggerProvider.getLogger('audit.http'), trustedProxies: ['10.0.0.0/8'] }));
//   ... routes ...
//   app.use(audit.errorRecorder);                  // after the routes: notes the exception type
//
// Differences from Python, by nature: nothing is sealed in this process (serve
// seals on arrival), so "no loss" depends on the exporter reaching serve; see
// the guide for the retry limits and the collector with a persistent queue.

const crypto = require('node:crypto');
const net = require('node:net');
const { AsyncLocalStorage } = require('node:async_hooks');
const { context } = require('@opentelemetry/api');
const { SeverityNumber } = require('@opentelemetry/api-logs');

const ANONYMOUS = 'anonymous';
const UNMATCHED = '(unmatched)';
const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

// ---------------------------------------------------------------- audit context
// AsyncLocalStorage plays the part of Python's contextvars: audit records logged
// anywhere inside a request (callbacks, promises, timers) inherit its actor,
// session and client address.
const storage = new AsyncLocalStorage();

function currentAuditContext() {
  const store = storage.getStore();
  if (!store) return null;
  return typeof store === 'function' ? store() : store;
}

function runWithAuditContext(attributes, fn) {
  return storage.run(attributes, fn);
}

// A LogRecordProcessor that fills audit records (those with audit.action) from
// the audit context; explicit attributes win. Register it before the batch processor.
class AuditContextProcessor {
  onEmit(logRecord) {
    const attrs = logRecord.attributes;
    if (!attrs || attrs['audit.action'] === undefined) return;
    const inherited = currentAuditContext();
    if (!inherited) return;
    for (const [key, value] of Object.entries(inherited)) {
      if (attrs[key] === undefined && value !== undefined && value !== null) logRecord.setAttribute(key, value);
    }
  }
  forceFlush() { return Promise.resolve(); }
  shutdown() { return Promise.resolve(); }
}

// ---------------------------------------------------------------- client address
function parseCidr(entry) {
  const [addr, bits] = entry.split('/');
  const family = net.isIP(addr);
  if (!family) throw new Error(`trustedProxies: ${JSON.stringify(entry)} is not an IP address or network`);
  const list = new net.BlockList();
  const prefix = bits === undefined ? (family === 4 ? 32 : 128) : Number(bits);
  list.addSubnet(addr, prefix, family === 4 ? 'ipv4' : 'ipv6');
  return list;
}

function unmap(address) {
  // Node gives '::ffff:10.1.2.3' on a dual-stack socket: store the IPv4 address.
  if (typeof address === 'string' && address.toLowerCase().startsWith('::ffff:') && net.isIPv4(address.slice(7))) {
    return address.slice(7);
  }
  return address;
}

function stripPort(token) {
  let t = token.trim().replace(/^"|"$/g, '');
  if (t.startsWith('[')) return t.slice(1, t.indexOf(']') > 0 ? t.indexOf(']') : undefined);
  if ((t.match(/:/g) || []).length === 1) t = t.split(':')[0];
  return t;
}

function forwardedFor(header) {
  const hops = [];
  for (const element of header.split(',')) {
    for (const pair of element.split(';')) {
      const [key, value] = pair.trim().split('=');
      if (key && key.toLowerCase() === 'for' && value !== undefined) hops.push(stripPort(value));
    }
  }
  return hops;
}

function makeTrusted(entries) {
  const lists = entries.map(parseCidr);
  return (address) => {
    const a = unmap(address);
    const family = net.isIP(a);
    if (!family) return false;
    return lists.some((l) => l.check(a, family === 4 ? 'ipv4' : 'ipv6'));
  };
}

function clientAddress(peer, xff, forwarded, trusted, anyTrusted) {
  if (!xff && !forwarded) return [peer, null];
  if (!anyTrusted || !trusted(peer)) {
    const text = forwarded ? `forwarded: ${forwarded}` : `x-forwarded-for: ${xff}`;
    return [peer, text.slice(0, 512)];
  }
  const hops = forwarded ? forwardedFor(forwarded) : xff.split(',').map(stripPort);
  let client = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = unmap(hops[i]);
    if (!hop || !net.isIP(hop)) break;
    client = hop;
    if (!trusted(hop)) break;
  }
  return [client, null];
}

// ---------------------------------------------------------------- actor, resource, result
function actorOf(value) {
  if (value === undefined || value === null || value === false || value === '') return null;
  if (typeof value === 'string') return [value, 'user'];
  if (Array.isArray(value) && value.length === 2) return [String(value[0]), String(value[1])];
  if (value.isAuthenticated === false) return null;
  const id = value.id ?? value.sub ?? value.username;
  if (id === undefined || id === null) return null;
  const type = ['user', 'service', 'admin', 'system'].includes(value.type) ? value.type : (value.isAdmin ? 'admin' : 'user');
  return [String(id), type];
}

function routeTemplate(req) {
  if (!req.route || typeof req.route.path !== 'string') return null;
  // Express writes parameters ':id'; otel-audit writes them '{id}' in every language.
  return `${req.baseUrl || ''}${req.route.path}`.replace(/:([A-Za-z0-9_]+)\??/g, '{$1}') || '/';
}

function defaultResource(route, params) {
  if (route === null) return ['http.route', UNMATCHED];
  const names = [...route.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
  for (let i = names.length - 1; i >= 0; i--) {
    const name = names[i];
    if (params[name] !== undefined) {
      const before = route.slice(0, route.indexOf(`{${name}`)).replace(/\/+$/, '');
      let segment = before.slice(before.lastIndexOf('/') + 1);
      if (!segment || segment.includes('{')) segment = name;
      return [segment, String(params[name])];
    }
  }
  return ['http.route', route];
}

function resultOf(status, error, disconnected, complete) {
  if (status === 401 || status === 403) return 'denied';
  if (error) return 'failure';
  if (disconnected && !complete) return 'failure';
  if (!status || status >= 400) return 'failure';
  return 'success';
}

function sessionDigest(value) {
  return `sha256:${crypto.createHash('sha256').update(String(value)).digest('hex').slice(0, 32)}`;
}

function cookie(header, name) {
  if (!header) return null;
  for (const part of header.split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return rest.join('=').replace(/^"|"$/g, '') || null;
  }
  return null;
}

// ---------------------------------------------------------------- route marks
const MARK = Symbol.for('otel-audit.route');

// audited({ action, resourceType, resourceId }) as route middleware:
//   app.post('/exports/:report_id', audit.audited({ action: 'report.export', resourceType: 'report', resourceId: 'reportId' }), handler)
function audited(options = {}) {
  return function auditedRoute(req, _res, next) {
    req[MARK] = { audit: true, ...options };
    next();
  };
}

function notAudited(req, _res, next) {
  req[MARK] = { audit: false };
  next();
}

// ---------------------------------------------------------------- the middleware
function middleware(options = {}) {
  const {
    logger,
    requests = 'all',
    exclude = [],
    actor = (req) => req.user,
    resources = null,
    trustedProxies = [],
    sessionCookie = null,
    sessionHeader = null,
    hashSessionId = true,
    hook = null,
  } = options;
  if (!logger) throw new Error('audit.middleware needs a logger: loggerProvider.getLogger("audit.http")');
  if (!['all', 'state-changing', 'marked'].includes(requests)) throw new Error(`requests=${requests}: all, state-changing or marked`);
  const trusted = makeTrusted(trustedProxies);
  const anyTrusted = trustedProxies.length > 0;
  const excludeExact = new Set(exclude.filter((e) => !e.endsWith('*')));
  const excludePrefixes = exclude.filter((e) => e.endsWith('*')).map((e) => e.slice(0, -1));

  function selected(req, route) {
    const mark = req[MARK];
    if (mark && mark.audit === false) return false;
    const path = req.originalUrl.split('?')[0];
    if (excludeExact.has(path) || (route && excludeExact.has(route))) return false;
    if (excludePrefixes.some((p) => path.startsWith(p) || (route && route.startsWith(p)))) return false;
    if (mark) return true;
    if (requests === 'all') return true;
    if (requests === 'state-changing') return STATE_CHANGING.has(req.method);
    return false;
  }

  function resolveActor(req) {
    try {
      return actorOf(actor(req));
    } catch (err) {
      return null;
    }
  }

  function sessionId(req) {
    let value = req.session && (req.session.id || req.sessionID);
    if (!value && sessionCookie) value = cookie(req.headers.cookie, sessionCookie);
    if (!value && sessionHeader) value = req.headers[sessionHeader.toLowerCase()];
    if (!value) return null;
    return hashSessionId ? sessionDigest(value) : String(value);
  }

  return function auditMiddleware(req, res, next) {
    const start = process.hrtime.bigint();
    const peer = unmap(req.socket.remoteAddress) || null;
    const [client, ignored] = clientAddress(peer, req.headers['x-forwarded-for'], req.headers.forwarded, trusted, anyTrusted);
    // The span of @opentelemetry/instrumentation-http is active here: keep it for the record.
    const otelContext = context.active();
    let done = false;
    let lastActor = null;

    const contextValues = () => {
      const a = resolveActor(req) || lastActor || [ANONYMOUS, 'user'];
      if (a[0] !== ANONYMOUS) lastActor = a;
      const values = { 'audit.actor.id': a[0], 'audit.actor.type': a[1] };
      if (client) values['client.address'] = client;
      if (req.headers['user-agent']) values['user_agent.original'] = req.headers['user-agent'];
      const session = sessionId(req);
      if (session) values['session.id'] = session;
      return values;
    };

    const emit = (complete, disconnected) => {
      if (done) return;
      done = true;
      const route = routeTemplate(req);
      if (!selected(req, route)) return;
      const mark = req[MARK] || {};
      const a = resolveActor(req) || lastActor || [ANONYMOUS, 'user'];
      const params = req.params || {};
      let resourceType;
      let resourceId;
      if (mark.resourceType) {
        resourceType = mark.resourceType;
        resourceId = mark.resourceId !== undefined && params[mark.resourceId] !== undefined
          ? String(params[mark.resourceId]) : defaultResource(route, params)[1];
      } else if (typeof resources === 'function') {
        [resourceType, resourceId] = resources(req) || defaultResource(route, params);
      } else {
        const name = resources && Object.keys(params).reverse().find((n) => resources[n]);
        [resourceType, resourceId] = name ? [resources[name], String(params[name])] : defaultResource(route, params);
      }
      const status = complete || res.headersSent ? res.statusCode : null;
      const error = req[ERROR] || null;
      const attributes = {
        'audit.action': mark.action || `${req.method} ${route === null ? UNMATCHED : route}`,
        'audit.actor.id': a[0],
        'audit.actor.type': a[1],
        'audit.resource.type': resourceType,
        'audit.resource.id': String(resourceId),
        'audit.result': resultOf(status, error, disconnected, complete),
        'http.request.method': req.method,
        'url.path': req.originalUrl.split('?')[0],
        'otel_audit.web.duration_us': Number((process.hrtime.bigint() - start) / 1000n),
      };
      if (route !== null) attributes['http.route'] = route;
      if (status !== null) attributes['http.response.status_code'] = status;
      if (client) attributes['client.address'] = client;
      if (peer) attributes['network.peer.address'] = peer;
      if (ignored) attributes['otel_audit.web.forwarded_ignored'] = ignored;
      if (req.headers['user-agent']) attributes['user_agent.original'] = req.headers['user-agent'];
      const session = sessionId(req);
      if (session) attributes['session.id'] = session;
      if (error) attributes['error.type'] = (error && error.constructor && error.constructor.name) || 'Error';
      if (disconnected && !complete) attributes['otel_audit.web.client_disconnected'] = true;
      if (hook && hook(req, attributes) === false) return;
      logger.emit({
        severityNumber: SeverityNumber.INFO,
        severityText: 'INFO',
        body: `${attributes['audit.action']} -> ${status === null ? 'no response' : status}`,
        attributes,
        context: otelContext,
      });
    };

    // Emitted when the response is handed over (res.end), before it completes on the wire,
    // or when the connection closes first (the client went away).
    const end = res.end;
    res.end = function auditedEnd(...args) {
      emit(true, false);
      return end.apply(this, args);
    };
    res.on('close', () => {
      if (!res.writableFinished) emit(false, true);
    });
    storage.run(contextValues, next);
  };
}

const ERROR = Symbol.for('otel-audit.error');

// Register after the routes: remembers the exception for the request's record, then lets
// Express's error handling answer as usual.
function errorRecorder(err, req, _res, next) {
  req[ERROR] = err;
  next(err);
}

module.exports = {
  AuditContextProcessor,
  audited,
  clientAddress,
  currentAuditContext,
  errorRecorder,
  middleware,
  notAudited,
  runWithAuditContext,
  sessionDigest,
};
