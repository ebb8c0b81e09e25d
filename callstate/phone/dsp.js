// The browser phone's logic that needs no browser: resampling, G.711 mu-law, 20 ms framing, the playback
// jitter buffer with Twilio's mark/clear rules, and the live view's bookkeeping of a call's log.
// Loaded three ways: inlined into /phone, prepended to the AudioWorklet module, and required by node for
// tests (tests/test_phone_js.py runs tests/phone_dsp.test.js). No DOM, no Web Audio, no imports.
"use strict";

// ---------------------------------------------------------------------------------------------- resampler
// Windowed-sinc polyphase resampler, the twin of adapters/resample.py: a sinc low-passed at 0.9 x the lower
// Nyquist frequency, Blackman window over `zeroCrossings` lobes each side, one tap table per phase.
function gcd(a, b) { while (b) { [a, b] = [b, a % b]; } return a; }

class Resampler {
  constructor(rateIn, rateOut, zeroCrossings = 8) {
    if (!(rateIn > 0 && rateOut > 0)) throw new Error("sample rates must be positive");
    const g = gcd(rateIn, rateOut);
    this.num = rateIn / g; this.den = rateOut / g;
    const cutoff = 0.9 * Math.min(1, rateOut / rateIn);
    this.half = Math.max(1, Math.ceil(zeroCrossings / cutoff));
    this.phases = [];
    for (let p = 0; p < this.den; p++) {
      const frac = p / this.den, taps = new Float64Array(2 * this.half);
      for (let k = -this.half + 1, i = 0; k <= this.half; k++, i++) {
        const x = k - frac;
        if (Math.abs(x) >= this.half) continue;
        const sinc = x === 0 ? cutoff : Math.sin(Math.PI * cutoff * x) / (Math.PI * x);
        const w = 0.42 + 0.5 * Math.cos(Math.PI * x / this.half) + 0.08 * Math.cos(2 * Math.PI * x / this.half);
        taps[i] = sinc * w;
      }
      this.phases.push(taps);
    }
    this.buf = new Float64Array(0); this.offset = 0; this.j = 0;
    this.reset();
  }
  reset() { this.buf = new Float64Array(this.half); this.offset = -this.half; this.j = 0; }
  // Feed a piece of the signal; returns the output samples it completes (the stream lags by `half` inputs).
  feed(x) {
    const buf = new Float64Array(this.buf.length + x.length);
    buf.set(this.buf); buf.set(x, this.buf.length);
    const end = this.offset + buf.length, out = [];
    const half = this.half, num = this.num, den = this.den, n2 = 2 * half;
    let j = this.j;
    for (;;) {
      const pos = j * num, i0 = Math.floor(pos / den), p = pos - i0 * den;
      if (i0 + half >= end) break;
      const taps = this.phases[p], base = i0 - half + 1 - this.offset;
      let acc = 0;
      for (let k = 0; k < n2; k++) acc += taps[k] * buf[base + k];
      out.push(acc); j++;
    }
    this.j = j;
    const keepFrom = Math.max(0, Math.floor(j * num / den) - half + 1 - this.offset);
    this.buf = buf.slice(keepFrom); this.offset += keepFrom;
    return Float32Array.from(out);
  }
  // Group delay of the filter, in input samples (what the stream adds to latency).
  get delayIn() { return this.half; }
}

// ---------------------------------------------------------------------------------------------- mu-law
// ITU G.711 mu-law as Sun's g711.c (and adapters/audio.py): the 16-bit sample shifted to 14 bits, biased,
// its segment found, 4 mantissa bits kept, all bits inverted.
const BIAS = 0x84, CLIP14 = 8159, SEG_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
function ulawEncode(sample) {
  let v = Math.max(-32768, Math.min(32767, Math.round(sample))) >> 2, mask = 0xff;
  if (v < 0) { v = -v; mask = 0x7f; }
  v = Math.min(v, CLIP14) + (BIAS >> 2);
  for (let seg = 0; seg < 8; seg++) if (v <= SEG_END[seg]) return ((seg << 4) | ((v >> (seg + 1)) & 0x0f)) ^ mask;
  return 0x7f ^ mask;
}
function ulawDecode(u) {
  u = ~u & 0xff;
  const t = (((u & 0x0f) << 3) + BIAS) << ((u & 0x70) >> 4);
  return u & 0x80 ? BIAS - t : t - BIAS;
}
const ULAW_TABLE = Float32Array.from({ length: 256 }, (_, u) => ulawDecode(u) / 32768);

// Collects 8 kHz float samples ([-1, 1]) into 20 ms mu-law frames of 160 bytes: Twilio's media frame.
class Framer {
  constructor(frameSamples = 160) { this.n = frameSamples; this.cur = new Uint8Array(frameSamples); this.fill = 0; }
  push(samples) {
    const frames = [];
    for (let i = 0; i < samples.length; i++) {
      this.cur[this.fill++] = ulawEncode(samples[i] * 32768);
      if (this.fill === this.n) { frames.push(this.cur); this.cur = new Uint8Array(this.n); this.fill = 0; }
    }
    return frames;
  }
}

// ---------------------------------------------------------------------------------------------- playback
// The playback queue of the AudioWorklet: audio (float samples at the output rate) and marks, in order.
// Twilio's rules (shared/reference/protocols.md 1.4): a mark is echoed once all audio queued before it has
// played; `clear` drops the queued audio at once and echoes every pending mark. The jitter buffer: after
// running dry, playback waits until `prebuffer` samples are queued (or a mark stands behind the audio, so a
// short tail is never held back) before it starts again, so network jitter does not chop the first word.
class PlaybackQueue {
  constructor(prebuffer) {
    this.prebuffer = prebuffer; this.items = []; this.queued = 0; this.playing = false;
    this.played = 0;
  }
  // `tag` comes back in render()'s `started` with `ahead`: the samples queued before this audio when it came,
  // which it had to wait for anyway (so arrival-to-start minus `ahead` is the latency this queue added).
  pushAudio(samples, tag) {
    if (!samples.length) return;
    this.items.push({ audio: samples, at: 0, tag, ahead: this.queued }); this.queued += samples.length;
  }
  pushMark(name) { this.items.push({ mark: name }); }
  // Marks with no audio ahead of them are due now (echoed at once, as Twilio does on an empty queue).
  _dueMarks(out) {
    while (this.items.length && this.items[0].mark !== undefined) out.marks.push(this.items.shift().mark);
  }
  // Fill `dest` (one render quantum). Returns {marks: [...played], started: [tags of audio begun]}.
  render(dest) {
    const out = { marks: [], started: [] };
    this._dueMarks(out);
    if (!this.playing) {
      const markBehind = this.items.some((it) => it.mark !== undefined);
      if (this.queued >= this.prebuffer || (this.queued > 0 && markBehind)) this.playing = true;
    }
    let i = 0;
    while (this.playing && i < dest.length && this.items.length) {
      const it = this.items[0];
      if (it.mark !== undefined) { out.marks.push(it.mark); this.items.shift(); continue; }
      if (it.at === 0 && it.tag !== undefined) out.started.push({ tag: it.tag, ahead: it.ahead, offset: i });
      const n = Math.min(dest.length - i, it.audio.length - it.at);
      dest.set(it.audio.subarray(it.at, it.at + n), i);
      it.at += n; i += n; this.queued -= n; this.played += n;
      if (it.at === it.audio.length) { this.items.shift(); this._dueMarks(out); }
    }
    if (i < dest.length) {
      dest.fill(0, i);
      if (this.queued === 0) this.playing = false;  // ran dry: the next audio waits for the prebuffer again
    }
    return out;
  }
  // Drop every queued sample; returns the pending marks, in order, for echoing.
  clear() {
    const marks = this.items.filter((it) => it.mark !== undefined).map((it) => it.mark);
    const dropped = this.queued;
    this.items = []; this.queued = 0; this.playing = false;
    return { marks, dropped };
  }
}

// ---------------------------------------------------------------------------------------------- live view
// Folds a call's log (the store's envelopes, in seq order) into what the page shows. The machine's state
// is not logged; it is read off the effects that change it (StartLlm: thinking, CallTool: tool_pending,
// SendAudio: speaking, ClearPlayback: interrupted, the last mark of a reply played: listening).
class CallView {
  // states: the machine's state names by member (CallState, engine/states.py), given by the server.
  constructor(states) {
    this.S = states; this.state = this.S.LISTENING; this.items = []; this.turns = []; this.ended = false; this.lastSeq = 0;
    this.interim = ""; this.speaks = new Map(); this.ttsToSpeak = new Map(); this.markToTts = new Map();
    this.unplayed = new Set(); this.speechEnd = null; this.turnOpen = null; this.bargeIns = 0;
    this.ttsMs = new Map(); this.chunkMs = new Map();  // audio ms behind each mark (m<N>: TtsAudio N's)
  }
  apply(env) {
    if (env.seq <= this.lastSeq) return false;
    this.lastSeq = env.seq;
    const d = env.data || {}, t = env.t_ms;
    switch (env.type) {
      case "SpeechStopped": this.speechEnd = d.end_ms ?? t; break;
      case "Transcript":
        if (d.is_final) {
          this.interim = "";
          this.items.push({ kind: "caller", text: d.text, t });
          if (d.end_ms != null) this.speechEnd = Math.max(this.speechEnd ?? 0, d.end_ms);
        } else this.interim = d.text;
        break;
      case "StartLlm": if (!d.preemptive || this.state === this.S.LISTENING) this.state = this.S.THINKING; break;
      case "Respond": this.turnOpen = { turn: d.turn, end: this.speechEnd }; this.state = this.S.THINKING; break;
      case "Speak": {
        const item = { kind: d.purpose === "filler" ? "filler" : "agent", purpose: d.purpose, text: d.text, t,
          totalMs: 0, playedMs: 0, cutMs: 0, seq: env.seq };
        this.speaks.set(env.seq, item); this.items.push(item); break;
      }
      case "TtsAudio": this.ttsToSpeak.set(env.seq, env.cause); break;
      case "SendAudio": {
        const sp = this.speaks.get(this.ttsToSpeak.get(env.cause));
        if (sp) sp.totalMs += d.duration_ms;
        this.ttsMs.set(env.cause, d.duration_ms);
        this.state = this.S.SPEAKING;
        if (this.turnOpen && this.turnOpen.end != null) {
          this.turns.push({ turn: this.turnOpen.turn, v2v: t - this.turnOpen.end });
        }
        this.turnOpen = null; break;
      }
      case "SendMark": {
        const tts = Number(String(d.name).replace(/^m/, ""));
        this.markToTts.set(d.name, tts); this.chunkMs.set(d.name, this.ttsMs.get(tts) || 0);
        this.unplayed.add(d.name); break;
      }
      case "PlaybackMark": {
        if (!this.unplayed.delete(d.name)) break;  // a cleared mark: its audio was counted as cut
        const sp = this.speaks.get(this.ttsToSpeak.get(this.markToTts.get(d.name)));
        if (sp) sp.playedMs = Math.min(sp.totalMs, sp.playedMs + this._chunkMs(d.name));
        if (this.unplayed.size === 0 && this.state === this.S.SPEAKING) this.state = this.S.LISTENING;
        break;
      }
      case "ClearPlayback":
        for (const name of this.unplayed) {
          const sp = this.speaks.get(this.ttsToSpeak.get(this.markToTts.get(name)));
          if (sp) sp.cutMs += this._chunkMs(name);
        }
        this.unplayed.clear(); this.bargeIns++; this.state = this.S.INTERRUPTED;
        this.items.push({ kind: "barge-in", t }); break;
      case "CallTool": this.state = this.S.TOOL_PENDING; this.items.push({ kind: "tool", name: d.name, args: d.arguments, t, seq: env.seq }); break;
      case "ToolResult": {
        const tool = this.items.find((it) => it.kind === "tool" && it.seq === env.cause);
        if (tool) { tool.ok = d.ok; tool.ms = t - tool.t; }
        this.state = this.S.THINKING; break;
      }
      case "SpeechStarted": if (this.state === this.S.INTERRUPTED) this.state = this.S.LISTENING; break;
      case "Hangup": case "CallEnded": this.state = this.S.ENDED; this.ended = env.type === "CallEnded" || this.ended; break;
    }
    return true;
  }
  _chunkMs(markName) { return this.chunkMs.get(markName) || 0; }
  // Heard text of a Speak: its characters in proportion to the audio that played before the cut.
  static split(item) {
    if (!item.cutMs || !item.totalMs) return { heard: item.text, cut: "" };
    const frac = Math.max(0, Math.min(1, (item.totalMs - item.cutMs) / item.totalMs));
    let at = Math.round(item.text.length * frac);
    const space = item.text.lastIndexOf(" ", at);
    if (space > 0 && at < item.text.length) at = space;
    return { heard: item.text.slice(0, at), cut: item.text.slice(at) };
  }
}
const PhoneDsp = { Resampler, ulawEncode, ulawDecode, ULAW_TABLE, Framer, PlaybackQueue, CallView };
if (typeof module !== "undefined" && module.exports) module.exports = PhoneDsp;
if (typeof globalThis !== "undefined") globalThis.PhoneDsp = PhoneDsp;
