package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// load sends mixed REST traffic from 200 clients for seconds: lists (with
// and without filters), gets, triggers on 50 projects (409 while one of
// theirs is active) and cancels. Only 409s are expected errors. Goroutines
// and memory of the manager are compared before and after a settle.
func (b *bench) load(ctx context.Context, seconds int) error {
	b.log("load: 200 clients for %d s", seconds)
	projects, err := b.projects.take(50)
	if err != nil {
		return err
	}
	goBefore, _ := b.metric("go_goroutines")
	rssBefore, _ := b.rss()
	var ids []string
	var idsMu sync.Mutex
	codes := map[int]int{}
	var codesMu sync.Mutex
	var requests atomic.Int64
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	var wg sync.WaitGroup
	for w := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				var status int
				var body []byte
				var err error
				switch k := (w + i) % 20; {
				case k < 12:
					q := []string{"", "?status=completed", "?project_id=p-00007", "?job_type=demo_sync&limit=200", "?since=1h"}[k%5]
					status, body, err = b.do(http.MethodGet, "/v1/teams/bench/jobs"+q, nil)
				case k < 16:
					idsMu.Lock()
					id := "00000000-0000-0000-0000-000000000000"
					if len(ids) > 0 {
						id = ids[(w*31+i)%len(ids)]
					}
					idsMu.Unlock()
					status, body, err = b.do(http.MethodGet, "/v1/jobs/"+id, nil)
					if status == http.StatusNotFound && id == "00000000-0000-0000-0000-000000000000" {
						status = http.StatusOK // nothing triggered yet: a documented 404
					}
				case k < 19:
					status, body, err = b.postTrigger(projects, (w+i)%projects.n, map[string]any{"items": 5, "item_ms": 100})
					if status == http.StatusCreated {
						if id, err := triggeredID(body); err == nil {
							idsMu.Lock()
							ids = append(ids, id)
							idsMu.Unlock()
						}
					}
				default:
					idsMu.Lock()
					var id string
					if len(ids) > 0 {
						id = ids[len(ids)-1]
					}
					idsMu.Unlock()
					if id == "" {
						continue
					}
					status, body, err = b.do(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil)
					if status == http.StatusBadRequest && bytes.Contains(body, []byte("not in running status")) {
						status = http.StatusOK // not running (pending or ended): the documented 400
					}
				}
				requests.Add(1)
				if err != nil {
					status = -1
				}
				codesMu.Lock()
				codes[status]++
				codesMu.Unlock()
			}
		}()
	}
	wg.Wait()
	var unexpected []string
	for code, n := range codes {
		if code != http.StatusOK && code != http.StatusCreated && code != http.StatusConflict {
			unexpected = append(unexpected, fmt.Sprintf("%d x%d", code, n))
		}
	}
	b.add(Figure{Scenario: "load", Name: fmt.Sprintf("requests/s from 200 clients over %d s (codes %v)", seconds, codes), Value: float64(requests.Load()) / float64(seconds), Unit: "req/s"})
	b.add(Figure{Scenario: "load", Name: "unexpected responses (not 200/201/409) " + strings.Join(unexpected, " "), Value: float64(len(unexpected)), Unit: "kinds", Target: "none", Met: met(len(unexpected) == 0)})
	// Our idle keep-alive connections hold server goroutines until the
	// server's idle timeout: close them, then let in-flight runs end.
	b.http.CloseIdleConnections()
	time.Sleep(15 * time.Second)
	goAfter, _ := b.metric("go_goroutines")
	rssAfter, _ := b.rss()
	b.add(Figure{Scenario: "load", Name: fmt.Sprintf("manager goroutines after the load settled (%.0f before)", goBefore), Value: goAfter, Unit: "", Target: "no growth", Met: met(goAfter <= goBefore*1.1+20)})
	b.add(Figure{Scenario: "load", Name: fmt.Sprintf("manager RSS after the load settled (%.0f MiB before)", rssBefore), Value: rssAfter, Unit: "MiB"})
	return nil
}
