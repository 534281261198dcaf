package apiserver

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	"github.com/go-logr/logr/funcr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// TestWriteErrorLogsOnce: a 500 is one error line with its cause, a 503 one
// info line (expected during an outage), a 4xx only a debug line.
func TestWriteErrorLogsOnce(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		status int
		want   []string // the lines logged, by their start (an error line has no level)
	}{
		{"unexpected", errors.New("boom"), 500, []string{`"msg"="request failed" "error"="boom"`}},
		{"server timeout", apierrors.NewServerTimeout(schema.GroupResource{Resource: "jobruns"}, "create", 1), 503, []string{`"level"=0 "msg"="request unavailable; the client may retry"`}},
		{"unreachable", syscall.ECONNREFUSED, 503, []string{`"level"=0 "msg"="request unavailable; the client may retry"`}},
		{"not found", apierrors.NewNotFound(schema.GroupResource{Resource: "jobruns"}, "x"), 404, []string{`"level"=1 "msg"="request refused"`}},
		{"bad request", badRequest("no"), 400, []string{`"level"=1 "msg"="request refused"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var lines []string
			log := funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{Verbosity: 1})
			r := httptest.NewRequestWithContext(logf.IntoContext(context.Background(), log), http.MethodGet, "/v1/jobs/x", nil)
			w := httptest.NewRecorder()
			writeError(w, r, tt.err)
			if w.Code != tt.status {
				t.Errorf("status %d, want %d", w.Code, tt.status)
			}
			if len(lines) != len(tt.want) {
				t.Fatalf("logged %q, want %d line(s)", lines, len(tt.want))
			}
			for i, want := range tt.want {
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("logged %q, want it to start with %q", lines[i], want)
				}
			}
		})
	}
}
