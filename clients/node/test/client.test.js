'use strict';
// Runs against a real prompttune server: PROMPTTUNE_TARGET (host:port) and
// PROMPTTUNE_MODEL_URL (an OpenAI-compatible endpoint the server can reach). The Python
// test tests/ops/test_node_client.py starts both and runs this file.

const test = require('node:test');
const assert = require('node:assert/strict');
const { PromptTuneClient, PromptTuneError } = require('../src/index.js');

const target = process.env.PROMPTTUNE_TARGET;
const modelUrl = process.env.PROMPTTUNE_MODEL_URL;
const skip = !(target && modelUrl) && 'needs PROMPTTUNE_TARGET and PROMPTTUNE_MODEL_URL';

const POSITIVE = ['wonderful', 'delightful', 'moving', 'brilliant', 'charming', 'superb'];
const NEGATIVE = ['dull', 'tedious', 'awful', 'clumsy', 'boring', 'painful'];

function examples(count, prefix) {
  return Array.from({ length: count }, (_, index) => {
    const words = index % 2 === 0 ? POSITIVE : NEGATIVE;
    return {
      id: `${prefix}${index}`,
      inputs: { input: `the film was ${words[Math.floor(index / 2) % words.length]} #${prefix}${index}` },
      output: index % 2 === 0 ? 'positive' : 'negative',
    };
  });
}

function jobRequest(requestId) {
  return {
    task: {
      description: 'Decide whether a movie review sentence is positive or negative.',
      labels: ['positive', 'negative'],
      metric: 'METRIC_LABEL_CHOICE',
    },
    dataset: { train: examples(12, 'tr'), validation: examples(16, 'va'), test: examples(8, 'te') },
    model: { kind: 'MODEL_KIND_OPENAI_COMPATIBLE', base_url: modelUrl, model: 'fake-model' },
    search: {
      budget: { max_trials: 4, max_llm_calls: 600 },
      num_instruction_candidates: 2,
      max_demos: 2,
      minibatch_size: 8,
      seed: 1,
    },
    request_id: requestId,
  };
}

test('creates a job, watches it to completion and reads the result', { skip }, async () => {
  const client = new PromptTuneClient(target);
  try {
    const events = [];
    const job = await client.optimize(jobRequest(`node-${Date.now()}`), (event) => events.push(event));
    assert.equal(job.state, 'JOB_STATE_SUCCEEDED', job.error);
    const sequences = events.map((event) => Number(event.sequence));
    assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b));
    assert.equal(new Set(sequences).size, sequences.length);
    assert.ok(events.some((event) => event.kind === 'trial_finished'));
    assert.equal(events.at(-1).kind, 'state_changed');
    assert.equal(events.at(-1).state_changed.state, 'JOB_STATE_SUCCEEDED');
    const best = job.result.best;
    assert.ok(best.prompt.instruction.length > 0);
    assert.ok(best.validation.mean >= 0 && best.validation.mean <= 1);
    assert.ok(job.result.usage.llm_calls > 0);

    // Resuming after the last event yields nothing more: the job has ended.
    const replay = [];
    for await (const event of client.watchJob(job.id, { afterSequence: sequences.at(-1) })) {
      replay.push(event);
    }
    assert.equal(replay.length, 0);
  } finally {
    client.close();
  }
});

test('a bad request is INVALID_ARGUMENT naming the field', { skip }, async () => {
  const client = new PromptTuneClient(target);
  try {
    const request = jobRequest('');
    request.search.budget.max_trials = 0;
    request.dataset.validation = [];
    request.dataset.train = [];
    request.dataset.test = [];
    await assert.rejects(client.createJob(request), (error) => {
      assert.ok(error instanceof PromptTuneError);
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.match(error.field, /^dataset/);
      assert.ok(error.violations.length >= 1);
      assert.equal(error.violations[0].field, error.field);
      return true;
    });
    await assert.rejects(client.getJob('no-such-job'), (error) => error.code === 'NOT_FOUND');
  } finally {
    client.close();
  }
});
