"""detect on video: a video encoded from test frames gives, frame for frame, the detections detect gives on those
frames as pictures (exactly with a lossless codec; the same boxes, scores within the codec's loss, with a lossy
one), each record with its frame's index and time; sampling; JSON Lines or CSV streamed frame by frame; an
interrupted run or a source that breaks off leaves every record of every frame done; a corrupt packet skipped and
counted; no PyAV, exit 3 with the install line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from test_cli import cli

import fc2conv_onnx
from fc2conv_onnx.apps import video
from fc2conv_onnx.apps.video import Sampling

from conftest import FIXTURES

av = pytest.importorskip("av")  # the test extra installs it; a machine without it says it skipped

RATE = 5


def frames_of(count: int) -> list:
    """The disks scene moved 8 pixels right a frame (wrapping): the spot finder's three disks move with it."""
    disks = np.asarray(Image.open(FIXTURES / "disks.png").convert("RGB"))
    return [np.roll(disks, 8 * i, axis=1) for i in range(count)]


def encode(frames: list, path, codec: str = "ffv1", rate: int = RATE) -> None:
    """`frames` as a video: ffv1 in RGB is lossless; libx264 / mpeg4 in yuv420p are not."""
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
    for pixels in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


def by_frame(records) -> dict:
    found: dict = {}
    for record in records:
        found.setdefault(record.frame, []).append(record)
    return found


def test_a_lossless_video_gives_the_pictures_detections_frame_for_frame(spot_finder, tmp_path):
    frames = frames_of(6)
    encode(frames, tmp_path / "clip.mkv")
    found = fc2conv_onnx.detect(spot_finder, tmp_path / "clip.mkv", regression="box")
    assert found.video.frames == 6 and found.video.rate == RATE and found.video.corrupt == 0
    per_frame = by_frame(found.records)
    assert sorted(per_frame) == list(range(6))
    for index, pixels in enumerate(frames):
        Image.fromarray(pixels).save(tmp_path / f"{index}.png")
        pictures = fc2conv_onnx.detect(spot_finder, [tmp_path / f"{index}.png"], regression="box").records
        got = per_frame[index]
        assert [(r.box, r.score, r.klass, r.cell) for r in got] == [(r.box, r.score, r.klass, r.cell) for r in pictures]
        assert {(r.frame, r.time) for r in got} == {(index, index / RATE)}


@pytest.mark.parametrize("codec, suffix", [("libx264", ".mp4"), ("mpeg4", ".avi")])
def test_a_lossy_video_gives_the_same_boxes_scores_within_its_loss(spot_finder, tmp_path, codec, suffix):
    """Against the frames as decoded (saved as pictures): exactly; against the frames encoded: the same cells,
    scores within the codec's loss."""
    frames = frames_of(4)
    encode(frames, tmp_path / f"clip{suffix}", codec)
    found = by_frame(fc2conv_onnx.detect(spot_finder, tmp_path / f"clip{suffix}").records)
    decoded = [f.to_ndarray(format="rgb24") for f in av.open(str(tmp_path / f"clip{suffix}")).decode(video=0)]
    assert len(decoded) == len(found) == 4
    for index, pixels in enumerate(decoded):
        Image.fromarray(pixels).save(tmp_path / f"d{index}.png")
        exact = fc2conv_onnx.detect(spot_finder, [tmp_path / f"d{index}.png"]).records
        assert [(r.box, r.score) for r in found[index]] == [(r.box, r.score) for r in exact]
        Image.fromarray(frames[index]).save(tmp_path / f"o{index}.png")
        original = fc2conv_onnx.detect(spot_finder, [tmp_path / f"o{index}.png"]).records
        assert sorted(r.cell for r in found[index]) == sorted(r.cell for r in original)
        assert sorted(r.score for r in found[index]) == pytest.approx(sorted(r.score for r in original), abs=0.05)


@pytest.mark.parametrize("sampling, frames", [
    (Sampling(every=2), [0, 2, 4, 6, 8]),
    (Sampling(fps=2.5), [0, 2, 4, 6, 8]),
    (Sampling(start=0.5, duration=0.8), [3, 4, 5, 6]),  # times 0.6 .. 1.2, within [0.5, 1.3)
    (Sampling(every=3, start=0.2), [1, 4, 7]),
])
def test_sampling_picks_the_frames_asked_for(spot_finder, tmp_path, sampling, frames):
    encode(frames_of(10), tmp_path / "clip.mkv")
    found = fc2conv_onnx.detect(spot_finder, tmp_path / "clip.mkv", sampling=sampling)
    assert sorted(by_frame(found.records)) == frames and found.video.frames == len(frames)


def test_the_command_streams_json_lines_and_csv(spot_finder, tmp_path):
    encode(frames_of(4), tmp_path / "clip.mkv")
    expected = fc2conv_onnx.detect(spot_finder, tmp_path / "clip.mkv").records
    code, out, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", "-o", tmp_path / "r.jsonl")
    assert code == 0, stderr
    assert "in 4 frame(s) of video" in out
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [r.to_dict() for r in expected]
    code, _, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", "-o", tmp_path / "r.csv", "--every", "2")
    assert code == 0, stderr
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].endswith(",label,frame,time") and {row.split(",")[-2] for row in rows[1:]} == {"0", "2"}


def test_draw_writes_the_annotated_video_at_the_sources_rate(spot_finder, tmp_path):
    """--draw out.mp4: every frame run, boxes drawn as on pictures (frames without detections too), at the
    source's rate; decoded, its frames are the drawings within H.264's loss."""
    from fc2conv_onnx.commands.video_run import draw_records

    frames = frames_of(4)
    frames[2] = np.zeros_like(frames[2])  # a frame with nothing on it
    encode(frames, tmp_path / "clip.mkv")
    code, _, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", "-o", tmp_path / "r.jsonl", "--draw",
                          tmp_path / "drawn.mp4")
    assert code == 0, stderr
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    drawn = av.open(str(tmp_path / "drawn.mp4"))
    stream = drawn.streams.video[0]
    assert stream.average_rate == RATE
    decoded = [f.to_ndarray(format="rgb24") for f in drawn.decode(stream)]
    assert len(decoded) == 4 and 2 not in {r["frame"] for r in records}
    found = by_frame(fc2conv_onnx.detect(spot_finder, tmp_path / "clip.mkv").records)
    for index, pixels in enumerate(frames):
        height, width = decoded[index].shape[:2]
        expected = np.asarray(draw_records(pixels, found.get(index, [])), np.float32)[:height, :width]
        plain = np.asarray(draw_records(pixels, []), np.float32)[:height, :width]
        got = decoded[index].astype(np.float32)
        assert np.abs(got - expected).mean() < 3.0  # the frame, within the codec's loss
        boxes = np.abs(expected - plain).max(axis=2) > 100  # where the boxes and labels are drawn
        assert boxes.any() == (index != 2)
        if boxes.any():  # drawn there: the decoded frame is the drawing's, not the plain frame's
            assert np.abs(got - expected)[boxes].mean() < np.abs(got - plain)[boxes].mean() / 1.5  # 4:2:0 smears


def test_what_a_video_run_refuses(spot_finder, tmp_path, monkeypatch):
    encode(frames_of(2), tmp_path / "clip.mkv")
    for args, code, message in (
            (["-o", tmp_path / "r.json"], 2, "name the file .jsonl"),
            (["-o", tmp_path / "r.jsonl", "--every", "2", "--fps", "3"], 2, "not both"),
            (["-o", tmp_path / "r.jsonl", "--start", "-1"], 2, "0 or more seconds"),
            (["-o", tmp_path / "r.jsonl", "--draw", tmp_path / "d.png"], 3, "an annotated video is written as .mp4"),
            (["-o", tmp_path / "r.jsonl", "--draw", tmp_path / "clip.mkv"], 3, "the picture"),
    ):
        got, _, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", *args)
        assert got == code and message in stderr and stderr.count("\n") == 1, (args, stderr)
    got, _, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", FIXTURES / "disks.png", "-o", tmp_path / "x")
    assert got == 2 and "give one video, or pictures, not both" in stderr
    got, _, stderr = cli("detect", spot_finder, FIXTURES / "disks.png", "-o", tmp_path / "x.json", "--every", "2")
    assert got == 2 and "--every samples a video's frames" in stderr
    got, _, stderr = cli("detect", spot_finder, tmp_path / "missing.mp4", "-o", tmp_path / "x.jsonl")
    assert got == 3 and "is not a file" in stderr
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    got, _, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", "-o", tmp_path / "x.jsonl")
    assert got == 3 and "pip install 'fc2conv-onnx[video]'" in stderr


def test_a_corrupt_packet_is_skipped_and_counted(spot_finder, tmp_path, monkeypatch):
    """FFmpeg conceals most damage itself; a packet it cannot decode at all is skipped and counted, the run goes
    on (simulated: the third packet's decode fails as FFmpeg's InvalidDataError)."""
    encode(frames_of(5), tmp_path / "clip.mkv")
    real = av.packet.Packet.decode
    seen = []

    def failing(packet):
        seen.append(packet)
        if len(seen) == 3:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real(packet)

    monkeypatch.setattr(av.packet.Packet, "decode", failing)
    found = fc2conv_onnx.detect(spot_finder, tmp_path / "clip.mkv")
    assert found.video.corrupt == 1 and found.video.frames == 4
    assert "1 packet(s) FFmpeg could not decode were skipped" in found.to_text()


def test_a_source_that_breaks_off_keeps_the_frames_done(spot_finder, tmp_path, monkeypatch):
    """A stream whose connection drops after 3 frames: exit 8, and the records of those 3 frames written."""
    encode(frames_of(6), tmp_path / "clip.mkv")
    real = video.VideoReader._decoded

    def dropping(self):
        for count, item in enumerate(real(self)):
            if count == 3:
                self.broken = "Connection reset by peer"
                return
            yield item

    monkeypatch.setattr(video.VideoReader, "_decoded", dropping)
    code, _, stderr = cli("detect", spot_finder, tmp_path / "clip.mkv", "-o", tmp_path / "r.jsonl")
    assert code == 8 and "broke off after 3 frame(s) (Connection reset by peer)" in stderr, stderr
    frames = {json.loads(line)["frame"] for line in (tmp_path / "r.jsonl").read_text().splitlines()}
    assert frames == {0, 1, 2}


@pytest.mark.processes
@pytest.mark.parametrize("to_stdout", [False, True])
def test_an_interrupted_run_leaves_valid_json_lines(spot_finder, tmp_path, to_stdout):
    """Ctrl-C once records have come: exit 130, and every line written is a whole record, of whole frames."""
    encode(frames_of(1) * 400, tmp_path / "long.mkv")
    out = tmp_path / "r.jsonl"
    command = [sys.executable, "-m", "fc2conv_onnx", "detect", str(spot_finder), str(tmp_path / "long.mkv"), "-o",
               "-" if to_stdout else str(out), "--scales", "1,0.9,0.8"] + \
        ([] if to_stdout else ["--draw", str(tmp_path / "drawn.mkv")])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    if to_stdout:
        first = process.stdout.readline()  # records are coming
        assert first
    else:
        while time.monotonic() < deadline and not any(
                name.startswith(".r.jsonl.") and os.path.getsize(tmp_path / name) for name in os.listdir(tmp_path)):
            time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    rest = process.stdout.read()  # through the buffered reader that holds what readline read ahead
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130, stderr
    text = (first + rest).decode() if to_stdout else out.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    frames = [r["frame"] for r in records]
    assert records and frames == sorted(frames)
    per_frame = {frame: frames.count(frame) for frame in frames}
    whole = len(fc2conv_onnx.detect(spot_finder, [FIXTURES / "disks.png"], scales=(1, 0.9, 0.8)).records)
    assert set(per_frame.values()) == {whole}  # each frame's records, whole
    assert b"interrupted after" in stderr and b"each frame whole" in stderr
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    if not to_stdout:  # the annotated video ends where the records do, finished (its index written)
        drawn = [f for f in av.open(str(tmp_path / "drawn.mkv")).decode(video=0)]
        assert len(drawn) == len(per_frame)


def test_the_detector_takes_frames_as_frame_rows_and_ray_read_videos_give_them(spot_finder, tmp_path):
    """A batch of frames - `frame_rows`' (image, frame, time) or Ray's `read_videos`' (frame pixels, frame_index,
    frame_timestamp) - gives detect's records on the video, each row with its frame and time."""
    encode(frames_of(3), tmp_path / "clip.mkv")
    expected = fc2conv_onnx.detect(spot_finder, tmp_path / "clip.mkv").records
    want = sorted((r.frame, r.time, r.box, r.score) for r in expected)
    rows = list(fc2conv_onnx.frame_rows({"path": str(tmp_path / "clip.mkv")}))
    assert [row["frame"] for row in rows] == [0, 1, 2]
    ours = {"path": np.asarray([r["path"] for r in rows], dtype=object), "image": [r["image"] for r in rows],
            "frame": np.asarray([r["frame"] for r in rows]), "time": np.asarray([r["time"] for r in rows])}
    ray_form = {"path": ours["path"], "frame": ours["image"], "frame_index": ours["frame"],
                "frame_timestamp": ours["time"]}
    for batch in (ours, ray_form):
        columns = fc2conv_onnx.Detector(spot_finder)(batch)
        got = sorted(zip(columns["frame"].tolist(), columns["time"].tolist(),
                         zip(columns["x1"].tolist(), columns["y1"].tolist(), columns["x2"].tolist(),
                             columns["y2"].tolist()), columns["score"].tolist()))
        assert [(f, t) for f, t, _, _ in got] == [(f, t) for f, t, _, _ in want]
        np.testing.assert_allclose([s for *_, s in got], [s for *_, s in want], rtol=1e-6)  # float32 columns
        np.testing.assert_allclose([box for _, _, box, _ in got], [box for _, _, box, _ in want], rtol=1e-6)


@pytest.mark.processes
def test_a_live_stream_yields_records_as_it_comes(spot_finder, tmp_path):
    """A stream FFmpeg reads as it comes (a named pipe here, as `rtsp://` or a camera would be): the first records
    are on standard output while half the stream is still unsent; at its end, every frame's records."""
    encode(frames_of(1) * 60, tmp_path / "long.mkv")
    data = (tmp_path / "long.mkv").read_bytes()
    pipe = tmp_path / "live.mkv"
    os.mkfifo(pipe)
    process = subprocess.Popen([sys.executable, "-m", "fc2conv_onnx", "detect", str(spot_finder), str(pipe), "-o",
                                "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:  # wait for the reader (a refused run never opens the pipe: fail, do not hang)
        try:
            handle = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.02)
    os.set_blocking(handle, True)
    with os.fdopen(handle, "wb") as writer:
        writer.write(data[:len(data) // 2])
        writer.flush()
        first = process.stdout.readline()  # records come while the rest is unsent
        assert json.loads(first)["frame"] == 0
        writer.write(data[len(data) // 2:])
    rest = process.stdout.read()
    process.wait(timeout=60)
    assert process.returncode == 0, process.stderr.read()
    frames = {json.loads(line)["frame"] for line in (first + rest).decode().splitlines()}
    assert frames == set(range(60))


def test_the_progress_line_shows_frames_and_their_rate(monkeypatch):
    """On a terminal: the frames done and frames a second, at most every half second, ended by a newline."""
    from fc2conv_onnx.commands import running, video_run

    said = []
    monkeypatch.setattr(running, "say", lambda text, end="\n": said.append(text + end))
    clock = iter([100.0, 100.2, 101.0, 101.1, 102.0])
    monkeypatch.setattr(video_run.time, "monotonic", lambda: next(clock))
    counter = video_run._FrameCounter()  # started at 100.0
    frame = video.Frame(0, 0.0, np.zeros((1, 1, 3), np.uint8))
    counter(1, frame)  # 100.2: the first line
    counter(2, video.Frame(1, 0.2, frame.pixels))  # 101.0: 0.8 s later, another
    counter(3, video.Frame(2, 0.4, frame.pixels))  # 101.1: within half a second, none
    counter.end()
    assert said[0] == "\rfc2conv-onnx: 1 frame(s), 5.0 frames/s, at 0.00 s" and len(said) == 3
    assert said[1].startswith("\rfc2conv-onnx: 2 frame(s), 2.0 frames/s, at 0.20 s") and said[2] == "\n"
