// AudioWorklet processors of the browser phone; dsp.js is prepended to this file when the page builds the
// module (one Blob URL, nothing fetched). Both run on the audio thread and talk to the page by port
// messages; times are the audio clock (`currentTime`, seconds), which the page maps to performance.now().
"use strict";

// Microphone -> 8 kHz mu-law 20 ms frames. Each frame carries the audio clock of the render quantum that
// completed it: the moment this thread could first act on its last sample.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new PhoneDsp.Resampler(sampleRate, 8000);
    this.framer = new PhoneDsp.Framer(160);
    this.muted = false;
    this.port.onmessage = (e) => { if (e.data.type === "mute") this.muted = e.data.muted; };
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      const x = this.muted ? new Float32Array(input.length) : input;
      const frames = this.framer.push(this.resampler.feed(x));
      for (const f of frames) this.port.postMessage({ type: "frame", frame: f, audioTime: currentTime }, [f.buffer]);
    }
    return true;
  }
}

// Agent audio out: the jitter buffer and Twilio's mark/clear rules (PhoneDsp.PlaybackQueue).
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const prebufferMs = (options.processorOptions || {}).prebufferMs ?? 60;
    this.q = new PhoneDsp.PlaybackQueue(Math.round(sampleRate * prebufferMs / 1000));
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "audio") this.q.pushAudio(m.samples, m.tag);
      else if (m.type === "mark") {
        this.q.pushMark(m.name);
      } else if (m.type === "clear") {
        const { marks, dropped } = this.q.clear();
        this.port.postMessage({ type: "cleared", marks, droppedMs: dropped / sampleRate * 1000 });
      }
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    const { marks, started } = this.q.render(out);
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (marks.length || started.length) {
      // Audio started at sample `offset` of this quantum, which plays from currentTime on.
      const startedAt = started.map((s) => ({ tag: s.tag, aheadMs: s.ahead / sampleRate * 1000,
        audioTime: currentTime + s.offset / sampleRate }));
      this.port.postMessage({ type: "played", marks, started: startedAt, audioTime: currentTime });
    }
    return true;
  }
}

registerProcessor("phone-capture", CaptureProcessor);
registerProcessor("phone-playback", PlaybackProcessor);
