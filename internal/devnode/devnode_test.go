package devnode

import (
	"fmt"
	"testing"
	"time"
)

// A burst of pods must not queue behind each other in the agent: client-go's
// default controller limiter (virtual-kubelet's default) lets 10 keys a
// second through after a burst of 100, so the 1,000th new pod of a flood
// would wait ~90 s before the agent even looked at it.
func TestPodQueuesDoNotPaceABurst(t *testing.T) {
	limiter := podQueueRateLimiter()
	for i := range 1000 {
		if d := limiter.When(fmt.Sprintf("jobrun-system/run-%d-1", i)); d > podQueueRateLimiterBase {
			t.Fatalf("pod %d of a burst is delayed %s before the agent syncs it, want at most %s", i+1, d, podQueueRateLimiterBase)
		}
	}
	// A pod whose sync keeps failing still backs off.
	key := "jobrun-system/failing-1"
	var d0, d time.Duration
	for i := range 5 {
		d = limiter.When(key)
		if i == 0 {
			d0 = d
		}
	}
	if d <= d0 {
		t.Fatalf("a pod failing 5 times is retried after %s, as after its first failure (%s): want a backoff", d, d0)
	}
}
