"""`make demo` runs end to end (at a tiny latent) and reports the side-by-side timing."""

from flash_vaed.demo import main


def test_demo_runs_and_reports_speedup(caplog):
    caplog.set_level("INFO", logger="flash_vaed.demo")
    assert main(["--latent-shape", "16x2x2x2", "--repeats", "1"]) == 0
    text = caplog.text
    assert "speed-up of the student over the teacher" in text
    assert "max |diff|" in text
