package bench

import (
	"strings"
	"testing"
	"time"
)

func res(w string, m Mode, f string, total, cmd time.Duration, bytes, img int64) Result {
	return Result{Scenario: Scenario{Workload: Workload{Name: w}, Mode: m, Format: f}, Total: total, FirstOutput: total,
		Command: cmd, Bytes: bytes, ImageBytes: img, Requests: 2}
}

func TestTableRatios(t *testing.T) {
	rs := []Result{
		res("python3", Baseline, "gzip", 10*time.Second, time.Second, 1000, 1000),
		res("python3", Cold, "estargz", time.Second, 2*time.Second, 50, 1100),
	}
	tab := Table(rs)
	for _, want := range []string{"| python3 | full pull | gzip | 10.00 s | 10.00 s | 1.00 s |", "1.00 s (0.10x)", "2.00 s (2.00x)", "(0.05x)"} {
		if !strings.Contains(tab, want) {
			t.Errorf("table lacks %q:\n%s", want, tab)
		}
	}
	failed := Table([]Result{{Scenario: rs[0].Scenario, Err: "boom | bang\nmore"}})
	if !strings.Contains(failed, "failed: boom / bang |") {
		t.Errorf("failed row: %s", failed)
	}
}

func TestTargets(t *testing.T) {
	rs := []Result{
		res("python3", Baseline, "gzip", 10*time.Second, 0, 0, 0),
		res("python3", Cold, "estargz", time.Second, 0, 50, 1000), // 0.10x, 5%
		res("read-all", Baseline, "gzip", 10*time.Second, 0, 0, 0),
		res("read-all", Cold, "estargz", 13*time.Second, 0, 0, 0), // 1.3x
		res("seq-read-1GiB", Baseline, "gzip", 0, 1*time.Second, 0, 0),
		res("seq-read-1GiB", Warm, "estargz", 0, 1200*time.Millisecond, 0, 0), // 83%
		res("ls-lR-usr", Baseline, "gzip", 0, 1*time.Second, 0, 0),
		res("ls-lR-usr", Warm, "estargz", 0, 2*time.Second, 0, 0),         // 2x
		res("ls-lR-usr", Kept, "estargz", 0, 1400*time.Millisecond, 0, 0), // 1.4x
	}
	got := map[string]Target{}
	for _, tg := range Targets(rs, []string{"estargz", "gzip"}) {
		got[tg.Format+" "+tg.Goal] = tg
	}
	check := func(key string, met, missing bool) {
		t.Helper()
		tg, ok := got[key]
		if !ok || tg.Met != met || tg.Missing != missing {
			t.Errorf("%s: got %+v, want met=%v missing=%v", key, tg, met, missing)
		}
	}
	check("estargz python3 cold: total <= 0.15x full pull", true, false)
	check("estargz python3 cold: bytes <= 10% of compressed image", true, false)
	check("estargz read every file cold: total <= 1.2x full pull", false, false)
	check("estargz 1 GiB sequential read warm: >= 80% of local-disk throughput", true, false)
	check("estargz ls -lR /usr warm, new tree: <= 1.5x extracted baseline", false, false)
	check("estargz ls -lR /usr warm, tree kept: <= 1.5x extracted baseline", true, false)
	check("gzip python3 cold: total <= 0.15x full pull", false, true)
	if !strings.Contains(TargetTable(Targets(rs, []string{"estargz"})), "| python3 cold: total <= 0.15x full pull | estargz | 0.100x | yes |") {
		t.Error("target table row missing")
	}
}

func TestProcParsing(t *testing.T) {
	stat := "1234 (lazy root) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 130 0 0 20 0 12 0 100 1000000 2000 18446744073709551615"
	cpu, err := ParseStatCPU(stat, 100)
	if err != nil || cpu != 3800*time.Millisecond {
		t.Fatalf("cpu = %v, %v; want 3.8s", cpu, err)
	}
	if _, err := ParseStatCPU("garbage", 100); err == nil {
		t.Error("garbage parsed")
	}
	status := "Name:\tlazyroot\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n"
	if got := ParseVmHWM(status); got != 50<<20 {
		t.Errorf("VmHWM = %d", got)
	}
	for out, want := range map[string]int64{
		"peak-rss 17301504\n":               17301504,
		"extracted 3 layers\npeak-rss 42\n": 42,
		"peak-rss\n":                        0,
		"peak-rss -5\n":                     0,
		"":                                  0,
	} {
		if got := parsePeakRSS(out); got != want {
			t.Errorf("parsePeakRSS(%q) = %d, want %d", out, got, want)
		}
	}
}

func TestTBFArgs(t *testing.T) {
	got := strings.Join(TBFArgs("lzb-h", 200_000_000), " ")
	// 2 ms of 25 MB/s is 50 kB, under the 64 KiB floor; the queue holds
	// 100 ms (2.5 MB).
	if got != "tc qdisc replace dev lzb-h root tbf rate 200000000bit burst 65536 limit 2500000" {
		t.Errorf("tbf args: %s", got)
	}
}
