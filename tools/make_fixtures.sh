#!/usr/bin/env bash
# Regenerate every packaged audio fixture in adapters/audio/ (mu-law 8 kHz mono, raw, .ulaw).
#
# Needs espeak-ng and sox (apt-get install espeak-ng sox) only here: tests and the package read the
# committed .ulaw files and never call either tool. Output is deterministic for a given espeak-ng/sox
# version (the committed files: espeak-ng 1.51 and SoX 14.4.2, Debian 12): -R makes sox's noise
# generator repeatable and -D turns dithering off.
#
# Speech chain, and why:
#   espeak-ng en-us at 165 wpm      a typical caller pace (conversational English is 150-180 wpm)
#   sinc 300-3400                   the telephone band: what a caller's audio looks like after the PSTN
#   silence -l ... reverse (x2)     trim leading/trailing silence (below -45 dBFS), so a fixture is speech
#                                   from its first byte to its last: tests pad it with known silence and so
#                                   know the truth; and cap pauses inside a line at 100 ms (-40 dBFS),
#                                   a brisk caller: espeak pauses 420 ms at a full stop, and with the
#                                   weak consonants around a pause (under the noise at 10 dB SNR) even
#                                   150 ms split "Thanks, bye" in two at the VAD's 300 ms hangover
#   gain -n -6                      peaks at -6 dBFS, a plausible level on a phone line
#   rate 8000, mu-law raw           exactly what Twilio Media Streams sends (160 bytes per 20 ms)
set -euo pipefail

out="$(cd "$(dirname "$0")/.." && pwd)/adapters/audio"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

SOX="sox -D -R"
ULAW=(-r 8000 -c 1 -e mu-law -t raw)

speech() {  # name, text
  espeak-ng -v en-us -s 165 -w "$tmp/$1.wav" "$2"
  $SOX "$tmp/$1.wav" "${ULAW[@]}" "$out/$1.ulaw" \
    sinc 300-3400 gain -n -6 \
    silence -l 1 0.02 -45d -1 0.1 -40d reverse silence 1 0.02 -45d reverse \
    rate 8000
}

# The caller's lines of the shipment-status demo call, one file each.
speech shipment_1 "Hi, is my shipment delayed?"
speech shipment_2 "The tracking number is 4 5 1 9 9 2."
speech shipment_3 "Wait, actually, can you text me instead?"
speech shipment_4 "No, that's all. Thanks, bye."
# Barge-in cases: an acknowledgement that must never count, and a word that always does.
speech uh_huh "uh-huh"
speech stop "stop"

# A cough-like burst: 150 ms of band-limited noise with a fast attack and a decaying tail.
# It is loud enough to trip the VAD; what matters is that its speech duration stays under the
# 250 ms barge-in minimum (engine/policy.py BargeIn.min_speech_ms).
$SOX -n "${ULAW[@]}" "$out/cough.ulaw" \
  synth 0.15 whitenoise sinc 300-2500 fade q 0.01 0.15 0.12 gain -n -8

# 3 s of phone line noise: pink plus brown noise (hiss and rumble) in the telephone band, with a slow
# 0.5 Hz level wander of about 3 dB (line AGC and comfort noise are never flat; perfectly stationary
# noise would flatter an energy detector), -40 dBFS sample peak (about -52 dBFS mean power). The VAD
# tests rescale it to each SNR; noise alone, at any level, must never start speech.
$SOX -n "${ULAW[@]}" "$out/line_noise.ulaw" \
  synth 3 pinknoise synth 3 brownnoise mix sinc 300-3400 tremolo 0.5 30 gain -n -40

ls -l "$out"
du -cb "$out"/*.ulaw | tail -1
