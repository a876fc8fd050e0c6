"""`dgnerf orbit`: a video of novel views of one head along a closed camera path around the frontal view."""
from __future__ import annotations

from dgnerf.camera import orbit_path
from dgnerf.commands._common import add_model_args, build_model, check_camera_flags, check_out, codes, render_frames
from dgnerf.errors import DgnerfError
from dgnerf.media import write_video


def run(args):
    check_out(args.out, (".mp4", ".gif"))
    check_camera_flags(args)
    if args.frames <= 0:
        raise DgnerfError(f"--frames: expected a positive number of frames, got {args.frames}")
    if not args.fps > 0:
        raise DgnerfError(f"--fps: expected a positive number, got {args.fps}")
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
                                   "as an MP4 (GIF when ffmpeg is unavailable or --out ends in .gif).")
    add_model_args(p)
    p.add_argument("--frames", type=int, default=48, help="number of frames (default 48)")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--yaw-amplitude", type=float, default=30.0, help="degrees (default 30)")
    p.add_argument("--pitch-amplitude", type=float, default=10.0, help="degrees (default 10)")
    p.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    p.set_defaults(func=run)
