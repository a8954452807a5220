// The microphone, in the audio thread: mixed to mono, resampled from the AudioContext's rate to
// 16 kHz (windowed-sinc low-pass, so downsampling does not alias), converted to PCM16 and posted
// to the main thread in chunks of 100 ms. Send the string "flush" to get the last, shorter chunk.

const OUT_RATE = 16000;
const CHUNK = OUT_RATE / 10;
const ZERO_CROSSINGS = 8; // of the sinc, each side: the filter's length

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.cutoff = 0.46 * Math.min(1, 1 / this.step); // cycles per input sample, below both Nyquists
    this.half = ZERO_CROSSINGS / (2 * this.cutoff); // filter half-width, in input samples
    this.input = new Float32Array(Math.ceil(this.half)); // history (silence at first), then new input
    this.pos = this.input.length; // where the next output sample is centred in `input`
    this.out = new Int16Array(CHUNK);
    this.fill = 0;
    this.port.onmessage = (e) => {
      if (e.data === "flush") {
        this.post();
        this.port.postMessage("flushed");
      }
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // not connected yet
    const n = channels[0].length;
    const buf = new Float32Array(this.input.length + n);
    buf.set(this.input);
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (const ch of channels) sum += ch[i];
      buf[this.input.length + i] = sum / channels.length;
    }
    while (this.pos + this.half < buf.length) {
      this.emit(this.sample(buf, this.pos));
      this.pos += this.step;
    }
    const used = Math.max(0, Math.floor(this.pos - this.half)); // no longer needed by any later sample
    this.input = buf.slice(used);
    this.pos -= used;
    return true;
  }

  // The filtered signal at fractional position `c` of `buf`.
  sample(buf, c) {
    let acc = 0;
    let norm = 0;
    for (let i = Math.ceil(c - this.half); i <= Math.floor(c + this.half); i++) {
      const t = i - c;
      const x = 2 * this.cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = sinc * (0.5 + 0.5 * Math.cos((Math.PI * t) / this.half)); // Hann window
      acc += w * buf[i];
      norm += w;
    }
    return acc / norm;
  }

  emit(s) {
    this.out[this.fill++] = Math.round(Math.max(-1, Math.min(1, s)) * 32767);
    if (this.fill === CHUNK) this.post();
  }

  post() {
    if (this.fill === 0) return;
    const chunk = this.out.slice(0, this.fill);
    this.port.postMessage(chunk, [chunk.buffer]);
    this.fill = 0;
  }
}

registerProcessor("capture", Capture);
