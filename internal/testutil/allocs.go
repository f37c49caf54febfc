package testutil

import "testing"

// LeastAllocsPerRun measures the allocations per call of f like
// testing.AllocsPerRun, three times, and returns the least. The count is
// process-wide, so an allocation of another goroutine (an HTTP server's,
// a cache's) can land in one measurement; the least of three is what f
// itself allocates. Under the race detector, where sync.Pool drops items
// at random by design, the test is skipped: `make test` runs these tests
// once more without -race.
func LeastAllocsPerRun(t testing.TB, runs int, f func()) float64 {
	t.Helper()
	if RaceEnabled {
		t.Skip("allocation counts need a build without -race (sync.Pool drops items at random under it)")
	}
	least := testing.AllocsPerRun(runs, f)
	for range 2 {
		if least == 0 {
			break
		}
		least = min(least, testing.AllocsPerRun(runs, f))
	}
	return least
}
