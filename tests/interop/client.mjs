#!/usr/bin/env node
// Drives one campaign through its lifecycle over the campaignd gRPC API from Node.js, using only
// the .proto files: create (twice, idempotently), launch, pause, resume, stop, an illegal pause,
// and the history. Prints one JSON line per step; exits 0 when every check passed, 1 otherwise.
//
// Usage: node client.mjs <address> [include-dir ...]
//   <address>      a gRPC target, e.g. unix:/run/campaignd/campaignd.sock or localhost:7443
//   include-dir    directories searched for imported .proto files; must provide
//                  google/api/field_behavior.proto and google/rpc/{status,error_details}.proto
//                  (e.g. the site-packages directory of googleapis-common-protos). The repository's
//                  proto/ directory is always searched; google/protobuf/* come with protobufjs.

import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_PROTO_DIR = path.resolve(HERE, "..", "..", "proto");
const CALL_TIMEOUT_MS = 10_000;
const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

class CheckFailed extends Error {}

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function check(step, condition, what, details = {}) {
  if (!condition) {
    throw new CheckFailed(JSON.stringify({ step, ok: false, mismatch: what, ...details }));
  }
}

function deepEqual(a, b) {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((key) => [key, sortKeys(value[key])]),
    );
  }
  return value;
}

function parseArgs(argv) {
  if (argv.length < 1 || argv[0] === "-h" || argv[0] === "--help") {
    process.stderr.write("usage: node client.mjs <address> [include-dir ...]\n");
    process.exit(2);
  }
  const [address, ...extra] = argv;
  const includeDirs = [...new Set([REPO_PROTO_DIR, ...extra.map((dir) => path.resolve(dir))])];
  for (const dir of includeDirs) {
    if (!existsSync(dir)) {
      process.stderr.write(`include dir does not exist: ${dir}\n`);
      process.exit(2);
    }
  }
  return { address, includeDirs };
}

// Load the service with the loader options a typical Node client would use: snake_case field
// names as in the .proto, enums as their names, 64-bit integers as strings, defaults filled in.
function loadService(includeDirs) {
  const definition = protoLoader.loadSync("campaignd/v1/campaign_service.proto", {
    includeDirs,
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
    objects: true,
  });
  const loaded = grpc.loadPackageDefinition(definition);
  return loaded.campaignd.v1.CampaignService;
}

// google.rpc.Status and ErrorInfo, for the rich error details in the status trailer.
function loadStatusTypes(includeDirs) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    for (const dir of includeDirs) {
      const candidate = path.join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    return target;
  };
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  root.resolveAll();
  return {
    Status: root.lookupType("google.rpc.Status"),
    ErrorInfo: root.lookupType("google.rpc.ErrorInfo"),
  };
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
    client[method](request, { deadline }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

async function mustCall(step, client, method, request) {
  try {
    return await call(client, method, request);
  } catch (error) {
    if (error instanceof CheckFailed) throw error;
    throw new CheckFailed(
      JSON.stringify({
        step,
        ok: false,
        mismatch: `${method} failed`,
        code: error.code,
        code_name: grpc.status[error.code],
        details: error.details ?? String(error),
      }),
    );
  }
}

function channelStates(campaign) {
  return Object.fromEntries((campaign.channels ?? []).map((ch) => [ch.channel_id, ch.state]));
}

function expectState(step, campaign, allowed) {
  const states = channelStates(campaign);
  check(step, allowed.includes(campaign.state), `campaign state ${campaign.state}, want one of ${allowed}`, {
    campaign: campaign.name,
    channel_states: states,
  });
  check(
    step,
    allowed.includes(states.main),
    `channel "main" state ${states.main}, want one of ${allowed}`,
    { campaign: campaign.name, channel_states: states },
  );
  emit({ step, ok: true, campaign: campaign.name, state: campaign.state, channel_states: states });
}

function decodeErrorInfos(error, types) {
  const raw = error.metadata?.get(STATUS_DETAILS_KEY) ?? [];
  const infos = [];
  let statusCode = null;
  for (const value of raw) {
    const bytes = typeof value === "string" ? Buffer.from(value, "base64") : value;
    const status = types.Status.toObject(types.Status.decode(bytes), { defaults: true });
    statusCode = status.code;
    for (const detail of status.details ?? []) {
      if (detail.type_url === ERROR_INFO_TYPE) {
        infos.push(types.ErrorInfo.toObject(types.ErrorInfo.decode(detail.value), { defaults: true }));
      }
    }
  }
  return { present: raw.length > 0, statusCode, infos };
}

async function run({ address, includeDirs }) {
  const CampaignService = loadService(includeDirs);
  const statusTypes = loadStatusTypes(includeDirs);
  const client = new CampaignService(address, grpc.credentials.createInsecure());
  emit({ step: "connect", ok: true, address, include_dirs: includeDirs });

  try {
    // 1. Create.
    const createRequest = {
      campaign: {
        display_name: "Interop from Node.js",
        labels: { suite: "interop", client: "node" },
        audience: { target_lists: ["lists/interop"] },
        channels: [
          {
            channel_id: "main",
            type: "test-email",
            // google.protobuf.Struct is a plain message to protobufjs: fields -> Value (oneof kind).
            // The well-known types come bundled with protobufjs in camelCase (stringValue), even
            // with keepCase, which only applies to the .proto files loaded from disk.
            content: { fields: { text: { stringValue: "hello" } } },
          },
        ],
      },
      request_id: `interop-create-${randomUUID()}`,
    };
    const created = await mustCall("create", client, "CreateCampaign", createRequest);
    check("create", /^campaigns\/[a-z][a-z0-9-]*$/.test(created.name), `bad name ${created.name}`);
    check("create", created.state === "DRAFT", `state ${created.state}, want DRAFT`);
    check("create", created.display_name === createRequest.campaign.display_name, "display_name differs", {
      got: created.display_name,
    });
    check("create", deepEqual(created.labels, createRequest.campaign.labels), "labels differ", {
      got: created.labels,
    });
    check(
      "create",
      deepEqual(created.audience?.target_lists, ["lists/interop"]),
      "audience.target_lists differs",
      { got: created.audience },
    );
    check("create", created.channels.length === 1, `${created.channels.length} channels, want 1`);
    const [channel] = created.channels;
    check("create", channel.channel_id === "main" && channel.type === "test-email", "channel differs", {
      got: { channel_id: channel.channel_id, type: channel.type },
    });
    check("create", channel.state === "DRAFT", `channel state ${channel.state}, want DRAFT`);
    check(
      "create",
      channel.content?.fields?.text?.stringValue === "hello",
      "channel content.text differs",
      { got: channel.content },
    );
    emit({ step: "create", ok: true, campaign: created.name, state: created.state });
    const name = created.name;

    // 2. The same request again: the first result, no second campaign.
    const repeated = await mustCall("create_again", client, "CreateCampaign", createRequest);
    check("create_again", deepEqual(repeated, created), "repeated CreateCampaign returned another result", {
      first: created,
      second: repeated,
    });
    emit({ step: "create_again", ok: true, campaign: repeated.name, same: true });

    // 3. Launch: nothing sends yet, so the channel waits in QUEUED (RUNNING once an engine runs it).
    const launched = await mustCall("launch", client, "LaunchCampaign", {
      name,
      attestation: { accepted_by: "interop-test", terms_version: "v1" },
      request_id: `interop-launch-${randomUUID()}`,
    });
    expectState("launch", launched, ["QUEUED", "RUNNING"]);
    check("launch", launched.attestation?.accepted_by === "interop-test", "attestation not recorded", {
      got: launched.attestation,
    });

    // 4. Pause, resume, stop.
    const paused = await mustCall("pause", client, "PauseCampaign", { name, reason: "interop pause" });
    expectState("pause", paused, ["PAUSED"]);
    const resumed = await mustCall("resume", client, "ResumeCampaign", { name, reason: "interop resume" });
    expectState("resume", resumed, ["RUNNING"]);
    const stopped = await mustCall("stop", client, "StopCampaign", { name, reason: "interop stop" });
    expectState("stop", stopped, ["STOPPED"]);

    // 5. Pausing a stopped campaign is refused with FAILED_PRECONDITION and an ErrorInfo reason.
    let refusal = null;
    try {
      const unexpected = await call(client, "PauseCampaign", { name, reason: "must be refused" });
      check("pause_stopped", false, "PauseCampaign on a STOPPED campaign succeeded", {
        state: unexpected.state,
      });
    } catch (error) {
      if (error instanceof CheckFailed) throw error;
      refusal = error;
    }
    check(
      "pause_stopped",
      refusal.code === grpc.status.FAILED_PRECONDITION,
      `status ${grpc.status[refusal.code]} (${refusal.code}), want FAILED_PRECONDITION (9)`,
      { details: refusal.details },
    );
    const decoded = decodeErrorInfos(refusal, statusTypes);
    check("pause_stopped", decoded.present, `no ${STATUS_DETAILS_KEY} trailer`);
    check(
      "pause_stopped",
      decoded.statusCode === grpc.status.FAILED_PRECONDITION,
      `google.rpc.Status.code ${decoded.statusCode}, want 9`,
    );
    const reasons = decoded.infos.map((info) => info.reason);
    check(
      "pause_stopped",
      reasons.some((reason) => reason === "ILLEGAL_TRANSITION" || reason === "NOTHING_TO_DO"),
      `ErrorInfo reasons ${JSON.stringify(reasons)}, want ILLEGAL_TRANSITION or NOTHING_TO_DO`,
      { error_infos: decoded.infos },
    );
    emit({
      step: "pause_stopped",
      ok: true,
      code: refusal.code,
      code_name: grpc.status[refusal.code],
      message: refusal.details,
      error_info: decoded.infos,
    });

    // 6. The history, every page, holds launch, pause, resume, stop in that order, and nothing after.
    const events = [];
    let pageToken = "";
    do {
      const page = await mustCall("history", client, "ListCampaignHistory", {
        parent: name,
        page_size: 100,
        page_token: pageToken,
      });
      events.push(...page.events);
      pageToken = page.next_page_token;
    } while (pageToken);
    const lifecycle = events.filter((event) => ["launch", "pause", "resume", "stop"].includes(event.operation));
    // A campaign-wide event and its channel event may both be recorded; count each run once.
    const order = lifecycle
      .map((event) => event.operation)
      .filter((operation, i, all) => i === 0 || operation !== all[i - 1]);
    const summary = events.map((e) => ({
      sequence: e.sequence,
      channel_id: e.channel_id,
      operation: e.operation,
      from_state: e.from_state,
      to_state: e.to_state,
    }));
    check(
      "history",
      deepEqual(order, ["launch", "pause", "resume", "stop"]),
      `lifecycle operations ${JSON.stringify(order)}, want ["launch","pause","resume","stop"]`,
      { events: summary },
    );
    const sequences = events.map((e) => BigInt(e.sequence));
    check(
      "history",
      sequences.every((seq, i) => i === 0 || seq > sequences[i - 1]),
      "sequence numbers are not increasing",
      { events: summary },
    );
    const wantTo = { launch: ["QUEUED", "RUNNING"], pause: ["PAUSED"], resume: ["RUNNING"], stop: ["STOPPED"] };
    for (const event of lifecycle.filter((e) => e.channel_id === "main")) {
      check(
        "history",
        wantTo[event.operation].includes(event.to_state),
        `${event.operation} event to_state ${event.to_state}, want one of ${wantTo[event.operation]}`,
        { events: summary },
      );
    }
    emit({ step: "history", ok: true, operations: order, events: summary });

    emit({ step: "done", ok: true, campaign: name });
    return 0;
  } finally {
    client.close();
  }
}

try {
  process.exitCode = await run(parseArgs(process.argv.slice(2)));
} catch (error) {
  if (error instanceof CheckFailed) {
    process.stdout.write(`${error.message}\n`);
  } else {
    emit({ step: "error", ok: false, mismatch: String(error?.stack ?? error) });
  }
  process.exitCode = 1;
}
