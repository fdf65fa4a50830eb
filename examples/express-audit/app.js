'use strict';
// An Express 5 app audited through the OpenTelemetry JS SDK and `otel-audit serve`.
//
//   otel-audit serve --dsn postgresql://... --token-file tokens --port 4318
//   OTEL_SERVICE_NAME=clinic-js \
//   OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=http://127.0.0.1:4318/v1/logs \
//   OTEL_EXPORTER_OTLP_LOGS_HEADERS="Authorization=Bearer $TOKEN" \
//   OTEL_METRICS_EXPORTER=none \
//   node app.js
//
// Tracing must be set up before express and http are loaded (the http
// instrumentation patches them), hence the order of this file.

// ---------------------------------------------------------------- 1. diagnostics
// Without a diagnostic logger the SDK says nothing when serve answers 401 or is down.
const { diag, DiagConsoleLogger, DiagLogLevel } = require('@opentelemetry/api');
diag.setLogger(new DiagConsoleLogger(), DiagLogLevel[process.env.OTEL_LOG_LEVEL || 'WARN'] ?? DiagLogLevel.WARN);

// ---------------------------------------------------------------- 2. traces (server spans)
const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { resourceFromAttributes } = require('@opentelemetry/resources');

const resource = resourceFromAttributes({
  'service.name': process.env.OTEL_SERVICE_NAME || 'clinic-js',
  'service.version': '1.0.0',
});
// No span exporter here: the spans exist for correlation (trace and span ids on the
// audit records); add a BatchSpanProcessor with an OTLP trace exporter to ship them.
new NodeTracerProvider({ resource }).register();
registerInstrumentations({ instrumentations: [new HttpInstrumentation()] });

// ---------------------------------------------------------------- 3. logs to otel-audit serve
const { logs } = require('@opentelemetry/api-logs');
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');
const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-http');
const audit = require('./audit');

const number = (name, fallback) => (process.env[name] ? Number(process.env[name]) : fallback);
// URL and headers from OTEL_EXPORTER_OTLP_LOGS_ENDPOINT / _HEADERS. timeoutMillis bounds the
// exporter's retries of one batch (10 s by default: a batch is dropped after ~10-13 s of outage).
const exporter = new OTLPLogExporter({ timeoutMillis: number('AUDIT_EXPORT_TIMEOUT_MILLIS', 10000) });
const loggerProvider = new LoggerProvider({
  resource,
  processors: [
    new audit.AuditContextProcessor(),
    // Current sdk-logs takes one options object; the old (exporter, config) form still
    // constructs, but then every export fails.
    new BatchLogRecordProcessor({
      exporter,
      scheduledDelayMillis: number('AUDIT_SCHEDULE_DELAY_MILLIS', 1000),
      exportTimeoutMillis: number('AUDIT_EXPORT_TIMEOUT_MILLIS', 30000),
      maxQueueSize: number('AUDIT_MAX_QUEUE_SIZE', 2048),
      maxExportBatchSize: 512,
    }),
  ],
});
logs.setGlobalLoggerProvider(loggerProvider);

// ---------------------------------------------------------------- 4. the application
const express = require('express');

const app = express();
const appLogger = loggerProvider.getLogger('clinic');

app.use(audit.middleware({
  logger: loggerProvider.getLogger('audit.http'),
  exclude: ['/health'],
  resources: { patient_id: 'patient_record' },
  trustedProxies: (process.env.AUDIT_TRUSTED_PROXIES || '').split(',').filter(Boolean),
  sessionCookie: 'sid',
  hook: (req, attributes) => {
    if (req.headers['x-audit-veto'] === '1') return false;
    if (req.headers['x-request-id']) attributes['request.id'] = req.headers['x-request-id'];
    return undefined;
  },
}));

// Authentication: sets req.user (what Passport does); routes decide on access.
app.use((req, _res, next) => {
  const auth = req.headers.authorization || '';
  if (auth.startsWith('Bearer ')) req.user = { id: auth.slice(7) };
  next();
});

function requireUser(req, res, next) {
  if (!req.user) return res.status(401).send('sign in');
  if (req.user.id.startsWith('guest')) return res.status(403).send('forbidden');
  return next();
}

app.get('/patients/:patient_id', requireUser, (req, res) => {
  res.json({ id: req.params.patient_id });
});

app.post('/patients/:patient_id/notes', requireUser, async (req, res) => {
  await new Promise((resolve) => setTimeout(resolve, 1));
  // No actor, session or client address here: the audit context supplies them.
  appLogger.emit({
    severityNumber: 9,
    severityText: 'INFO',
    body: 'note added',
    attributes: {
      'audit.action': 'note.create',
      'audit.resource.type': 'note',
      'audit.resource.id': `${req.params.patient_id}-n`,
      'audit.result': 'success',
    },
  });
  res.status(201).json({ ok: 'yes' });
});

app.get('/boom', requireUser, async () => {
  throw new RuntimeError('boom');
});

app.get('/stream', requireUser, (req, res) => {
  res.type('text/plain');
  let i = 0;
  const timer = setInterval(() => {
    if (i === 40) {
      clearInterval(timer);
      res.end();
      return;
    }
    res.write(`chunk ${i++}\n`);
  }, 50);
  res.on('close', () => clearInterval(timer));
});

app.get('/health', (_req, res) => res.send('ok'));

app.post('/exports/:report_id', audit.audited({ action: 'report.export', resourceType: 'report', resourceId: 'report_id' }),
  requireUser, (req, res) => res.json({ report: req.params.report_id }));

app.use(audit.errorRecorder);
app.use((err, _req, res, _next) => res.status(500).send('internal error'));

class RuntimeError extends Error {}

// ---------------------------------------------------------------- 5. run, and flush on the way out
// HOST=:: listens dual-stack: IPv4 peers then arrive as ::ffff:a.b.c.d (stored as a.b.c.d).
const server = app.listen(Number(process.env.PORT || 3000), process.env.HOST || '127.0.0.1', () => {
  console.log(`PORT ${server.address().port}`);
});

async function stop() {
  server.close();
  server.closeAllConnections();
  await new Promise((resolve) => setTimeout(resolve, 50)); // let the 'close' events of those connections run
  try {
    await loggerProvider.shutdown(); // exports what is still queued
  } finally {
    process.exit(0);
  }
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
