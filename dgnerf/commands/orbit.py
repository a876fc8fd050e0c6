"""`dgnerf orbit`: a video of novel views of one head along a closed camera path around the frontal view."""
from __future__ import annotations

from dgnerf.camera import orbit_path
from dgnerf.commands._common import (
    add_model_args,
    build_model,
    check_camera_flags,
    check_int,
    check_number,
    check_out,
    codes,
    render_frames,
    render_options,
)
from dgnerf.media import write_video

MAX_FRAMES = 100_000  # an hour at 24 fps


def run(args):
    # every flag before the model is loaded
    check_out(args.out, (".mp4", ".gif"))
    check_camera_flags(args)
    check_int(args.frames, "--frames", 1, MAX_FRAMES, "frames")
    check_number(args.fps, "--fps", 0, 1000, lo_open=True, what="frame rate")
    check_number(args.yaw_amplitude, "--yaw-amplitude", -360, 360, what="angle in degrees")
    check_number(args.pitch_amplitude, "--pitch-amplitude", -360, 360, what="angle in degrees")
    render_options(args)
    model, device = build_model(args)
    z, beta = codes(args, model)
    yaws, pitches = orbit_path(args.frames, args.yaw_amplitude, args.pitch_amplitude)
    yaws = [args.yaw + float(y) for y in yaws]
    pitches = [args.pitch + float(p) for p in pitches]
    frames = render_frames(model, device, z, beta, yaws, pitches, [args.roll] * args.frames, args, progress=True)
    path = write_video(frames, args.out, args.fps)
    print(f"wrote {path} ({len(frames)} frames)")
    return 0


def register(sub):
    p = sub.add_parser("orbit", help="render a video of novel views along a camera path around the head",
                       description="Render a closed camera path (yaw and pitch swings around the given pose) "
                                   "as an MP4 (GIF when ffmpeg is unavailable or --out ends in .gif), at the "
                                   "checkpoint's image size.")
    add_model_args(p)
    p.add_argument("--frames", type=int, default=48, help=f"number of frames, 1..{MAX_FRAMES} (default 48)")
    p.add_argument("--fps", type=float, default=24.0, help="frames per second (default 24)")
    p.add_argument("--yaw-amplitude", type=float, default=30.0, help="degrees (default 30)")
    p.add_argument("--pitch-amplitude", type=float, default=10.0, help="degrees (default 10)")
    p.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    p.set_defaults(func=run)
