'use strict';
// A Node.js client of prompttune.v1.OptimizerService over @grpc/grpc-js. It loads the
// repository's optimizer.proto at run time (no generated code), maps failed calls to
// PromptTuneError (with the offending field of INVALID_ARGUMENT), and watches a job with
// automatic resumption by event sequence. See docs/api.md for the wire contract.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');
const FIELD_TRAILER = 'prompttune-field';
const STATUS_DETAILS_TRAILER = 'grpc-status-details-bin';
const BAD_REQUEST_TYPE = 'type.googleapis.com/google.rpc.BadRequest';
const TERMINAL_STATES = new Set(['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED']);
// Codes worth reconnecting a WatchJob stream on: the server restarted or the network blipped.
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.INTERNAL, grpc.status.UNKNOWN]);

// google.rpc.Status and google.rpc.BadRequest, the only messages of
// google/rpc/{status,error_details}.proto a client needs to read error details.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: { nested: { Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } } } },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});
const StatusMessage = rpcTypes.lookupType('google.rpc.Status');
const BadRequestMessage = rpcTypes.lookupType('google.rpc.BadRequest');

/** A failed call: `code` is the gRPC status name (e.g. "INVALID_ARGUMENT"), `field` the
 * request field at fault (INVALID_ARGUMENT only) and `violations` the BadRequest details. */
class PromptTuneError extends Error {
  constructor(code, message, field, violations) {
    super(message);
    this.name = 'PromptTuneError';
    this.code = code;
    this.field = field;
    this.violations = violations;
  }

  static fromServiceError(error) {
    const code = Object.keys(grpc.status).find((name) => grpc.status[name] === error.code) || 'UNKNOWN';
    const metadata = error.metadata || new grpc.Metadata();
    const [field] = metadata.get(FIELD_TRAILER);
    return new PromptTuneError(code, error.details || error.message, field, decodeViolations(metadata));
  }
}

/** The field violations of a google.rpc.BadRequest in the status details trailer, if any. */
function decodeViolations(metadata) {
  const [details] = metadata.get(STATUS_DETAILS_TRAILER);
  if (!details) return [];
  const status = StatusMessage.decode(details);
  return status.details
    .filter((any) => any.type_url === BAD_REQUEST_TYPE)
    .flatMap((any) => BadRequestMessage.decode(any.value).field_violations)
    .map((violation) => ({ field: violation.field, description: violation.description }));
}

function loadService() {
  const definition = protoLoader.loadSync('prompttune/v1/optimizer.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).prompttune.v1.OptimizerService;
}

class PromptTuneClient {
  /** `target` is host:port; `options.credentials` defaults to plaintext, `options.token`
   * adds `authorization: Bearer <token>`, `options.timeoutMs` bounds each unary call. */
  constructor(target, options = {}) {
    const Service = loadService();
    this.stub = new Service(target, options.credentials || grpc.credentials.createInsecure());
    this.token = options.token;
    this.timeoutMs = options.timeoutMs || 30000;
  }

  close() {
    this.stub.close();
  }

  metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  unary(method, request) {
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata(), { deadline }, (error, reply) =>
        error ? reject(PromptTuneError.fromServiceError(error)) : resolve(reply),
      );
    });
  }

  /** Queues a job; the same `request_id` again returns the first job (ALREADY_EXISTS when
   * the body differs). Resolves to the CreateJobResponse ({job, estimate}). */
  createJob(request) {
    return this.unary('CreateJob', request);
  }

  getJob(jobId) {
    return this.unary('GetJob', { job_id: jobId });
  }

  listJobs(request = {}) {
    return this.unary('ListJobs', request);
  }

  cancelJob(jobId) {
    return this.unary('CancelJob', { job_id: jobId });
  }

  deleteJob(jobId) {
    return this.unary('DeleteJob', { job_id: jobId });
  }

  /** Yields the job's events in sequence order until the job ends. A dropped stream is
   * reopened after the last sequence seen, so no event is missed or repeated. */
  async *watchJob(jobId, { afterSequence = 0, maxReconnects = 5 } = {}) {
    let after = afterSequence;
    let reconnects = 0;
    for (;;) {
      const stream = this.stub.WatchJob({ job_id: jobId, after_sequence: after }, this.metadata());
      try {
        for await (const event of stream) {
          after = Math.max(after, Number(event.sequence));
          yield event;
        }
        return;
      } catch (error) {
        if (!RETRYABLE.has(error.code) || reconnects >= maxReconnects) {
          throw PromptTuneError.fromServiceError(error);
        }
        reconnects += 1;
        await new Promise((resolve) => setTimeout(resolve, 200 * reconnects));
      }
    }
  }

  /** Creates a job, follows its events (passed to `onEvent`) and resolves to the final Job. */
  async optimize(request, onEvent = () => {}) {
    const { job } = await this.createJob(request);
    for await (const event of this.watchJob(job.id)) onEvent(event);
    const finished = await this.getJob(job.id);
    if (!TERMINAL_STATES.has(finished.state)) {
      throw new PromptTuneError('UNKNOWN', `job ${job.id} is still ${finished.state}`);
    }
    return finished;
  }
}

module.exports = { PromptTuneClient, PromptTuneError, decodeViolations, TERMINAL_STATES };
