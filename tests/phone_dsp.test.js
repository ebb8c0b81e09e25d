// Unit tests of the browser phone's logic (callstate/phone/dsp.js) under node's own test runner.
// Run by tests/test_phone_js.py, which passes Python's G.711 tables (adapters/audio.py) in PHONE_ULAW_JSON
// so both codecs are held to the same bytes.
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const D = require(path.join(__dirname, "..", "callstate", "phone", "dsp.js"));

function tone(freq, rate, n, amp = 0.5) { return Float32Array.from({ length: n }, (_, i) => amp * Math.sin(2 * Math.PI * freq * i / rate)); }
function rms(x) { return Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length); }

test("resampler keeps a tone in the pass band at its level", () => {
  const r = new D.Resampler(48000, 8000);
  const y = r.feed(tone(1000, 48000, 48000));
  assert.ok(Math.abs(y.length - 8000) <= r.half, `length ${y.length}`);
  const mid = y.slice(400, 7000);
  assert.ok(Math.abs(rms(mid) - 0.5 / Math.SQRT2) < 0.01, `rms ${rms(mid)}`);
});

test("resampler low-passes: a tone above the new Nyquist frequency does not fold into the band", () => {
  for (const [rate, f] of [[48000, 5000], [44100, 6000], [48000, 11000]]) {
    const y = new D.Resampler(rate, 8000).feed(tone(f, rate, rate));
    const level = 20 * Math.log10(rms(y.slice(400, 7000)) / (0.5 / Math.SQRT2));
    assert.ok(level < -50, `${f} Hz at ${rate}: ${level.toFixed(1)} dB`);
  }
});

test("resampler streams: pieces give the same samples as the whole", () => {
  const x = tone(440, 8000, 1600);
  const whole = new D.Resampler(8000, 48000).feed(x);
  const r = new D.Resampler(8000, 48000), parts = [];
  for (let i = 0; i < x.length; i += 160) parts.push(...r.feed(x.subarray(i, i + 160)));
  assert.equal(parts.length, whole.length);
  for (let i = 0; i < whole.length; i++) assert.ok(Math.abs(parts[i] - whole[i]) < 1e-6);
});

test("mu-law matches G.711 (and adapters/audio.py byte for byte)", () => {
  assert.equal(D.ulawEncode(0), 0xff);
  assert.equal(D.ulawDecode(0xff), 0);
  for (let u = 0; u < 256; u++) {
    const s = D.ulawDecode(u);
    if (u !== 0x7f) assert.equal(D.ulawDecode(D.ulawEncode(s)), s, `round trip of byte ${u}`);
  }
  const file = process.env.PHONE_ULAW_JSON;
  if (file) {
    const ref = JSON.parse(fs.readFileSync(file, "utf8"));
    ref.decode.forEach((s, u) => assert.equal(D.ulawDecode(u), s, `decode ${u}`));
    ref.samples.forEach((s, i) => assert.equal(D.ulawEncode(s), ref.encode[i], `encode ${s}`));
  }
});

test("framer cuts 20 ms frames of 160 bytes and keeps the rest for the next call", () => {
  const f = new D.Framer(160);
  assert.equal(f.push(new Float32Array(100)).length, 0);
  const frames = f.push(new Float32Array(300));
  assert.equal(frames.length, 2);
  assert.ok(frames.every((fr) => fr.length === 160 && fr.every((b) => b === 0xff)));
  assert.equal(f.fill, 80);
});

function drain(q, quanta, size = 128) {
  const marks = [], started = [];
  for (let i = 0; i < quanta; i++) { const o = q.render(new Float32Array(size)); marks.push(...o.marks); started.push(...o.started); }
  return { marks, started };
}

test("a mark is echoed only when the audio queued before it has played", () => {
  const q = new D.PlaybackQueue(0);
  q.pushAudio(new Float32Array(300).fill(0.1), "a"); q.pushMark("m1");
  q.pushAudio(new Float32Array(300).fill(0.2), "b"); q.pushMark("m2");
  assert.deepEqual(drain(q, 2).marks, []);          // 256 of 300 samples played
  assert.deepEqual(drain(q, 1).marks, ["m1"]);      // 384: the first chunk is done
  assert.deepEqual(drain(q, 2).marks, ["m2"]);      // 640 >= 600
  assert.equal(q.played, 600);
});

test("a mark with nothing queued ahead of it is echoed at once", () => {
  const q = new D.PlaybackQueue(1000);
  q.pushMark("now");
  assert.deepEqual(drain(q, 1).marks, ["now"]);
});

test("clear drops queued audio, returns every pending mark in order, and plays silence after", () => {
  const q = new D.PlaybackQueue(0);
  q.pushAudio(new Float32Array(1000).fill(0.3), "a"); q.pushMark("m1");
  q.pushAudio(new Float32Array(1000).fill(0.3), "b"); q.pushMark("m2");
  drain(q, 2);
  const { marks, dropped } = q.clear();
  assert.deepEqual(marks, ["m1", "m2"]);
  assert.equal(dropped, 2000 - 256);
  const out = new Float32Array(128);
  const o = q.render(out);
  assert.deepEqual(o.marks, []);
  assert.ok(out.every((v) => v === 0));
});

test("jitter buffer: after running dry, playback waits for the prebuffer (or a mark behind the audio)", () => {
  const q = new D.PlaybackQueue(480);
  q.pushAudio(new Float32Array(160).fill(0.5), "a");
  const out = new Float32Array(128);
  q.render(out);
  assert.ok(out.every((v) => v === 0), "160 < 480 queued: still buffering");
  q.pushAudio(new Float32Array(400).fill(0.5), "b");
  const o = q.render(out);
  assert.ok(out.every((v) => v === 0.5), "560 >= 480: playing");
  assert.deepEqual(o.started.map((s) => [s.tag, s.ahead]), [["a", 0]]);
  const q2 = new D.PlaybackQueue(480);
  q2.pushAudio(new Float32Array(100).fill(0.5), "tail"); q2.pushMark("end");
  assert.deepEqual(drain(q2, 1).marks, ["end"], "a short tail before a mark is not held back");
});

function env(seq, t_ms, type, data = {}, cause = null) { return { call_id: "c", seq, t_ms, kind: "x", type, data, cause }; }

test("call view: heard and cut words, barge-in, voice to voice, tools, fillers, state", () => {
  const v = new D.CallView(JSON.parse(process.env.PHONE_STATES_JSON));
  const log = [
    env(1, 0, "CallStarted"),
    env(2, 900, "SpeechStopped", { end_ms: 900 }),
    env(3, 950, "Transcript", { text: "go forward", is_final: false }),
    env(4, 1000, "Transcript", { text: "go forward ten meters", is_final: true, end_ms: 880 }),
    env(5, 1100, "Respond", { turn: 1 }),
    env(6, 1150, "Speak", { text: "one two three four", purpose: "reply" }),
    env(7, 1300, "TtsAudio", { duration_ms: 200 }, 6),
    env(8, 1300, "SendAudio", { duration_ms: 200 }, 7),
    env(9, 1300, "SendMark", { name: "m7" }),
    env(10, 1310, "TtsAudio", { duration_ms: 200 }, 6),
    env(11, 1310, "SendAudio", { duration_ms: 200 }, 10),
    env(12, 1310, "SendMark", { name: "m10" }),
    env(13, 1500, "PlaybackMark", { name: "m7" }, 9),
    env(14, 1550, "ClearPlayback"),
    env(15, 1560, "PlaybackMark", { name: "m10" }, 12),
    env(16, 1700, "Speak", { text: "Let me check.", purpose: "filler" }),
    env(17, 1800, "CallTool", { name: "lookup", arguments: "{}" }),
    env(18, 2100, "ToolResult", { ok: true }, 17),
  ];
  const states = log.map((e) => (v.apply(e), v.state));
  assert.equal(v.apply(log[3]), false, "an envelope seen before is ignored");
  assert.deepEqual(v.turns, [{ turn: 1, v2v: 1300 - 900 }]);
  const agent = v.items.find((i) => i.kind === "agent");
  assert.deepEqual([agent.totalMs, agent.cutMs], [400, 200]);
  assert.deepEqual(D.CallView.split(agent), { heard: "one two", cut: " three four" });
  assert.equal(v.bargeIns, 1);
  assert.deepEqual(v.items.map((i) => i.kind), ["caller", "agent", "barge-in", "filler", "tool"]);
  assert.equal(v.items[4].ms, 300);
  assert.deepEqual([states[7], states[13], states[16], states[17]], ["speaking", "interrupted", "tool_pending", "thinking"]);
});
