package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

func (b *bench) do(method, path string, body any) (int, []byte, error) {
	return b.doAs(b.token, method, path, body)
}

// doAs is do with the bearer token token.
func (b *bench) doAs(token, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, b.api+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// postTrigger triggers a demo_sync run for the i-th project of projects
// through the REST API and returns the response.
func (b *bench) postTrigger(projects projectRange, i int, params map[string]any) (int, []byte, error) {
	project, err := projects.name(i)
	if err != nil {
		return 0, nil, err
	}
	return b.postTriggerAs(b.token, "bench", project, params)
}

// postTriggerAs triggers a demo_sync run for project of team with the
// bearer token token and returns the response.
func (b *bench) postTriggerAs(token, team, project string, params map[string]any) (int, []byte, error) {
	return b.doAs(token, http.MethodPost, "/v1/teams/"+team+"/jobs/trigger", map[string]any{"job_type": "demo_sync", "project_id": project, "params": params})
}

// trigger triggers a run as postTrigger does and returns its id; any
// answer but 201 Created is an error.
func (b *bench) trigger(projects projectRange, i int, params map[string]any) (string, error) {
	project, err := projects.name(i)
	if err != nil {
		return "", err
	}
	return b.triggerAs(b.token, "bench", project, params)
}

// triggerAs triggers a run as postTriggerAs does and returns its id; any
// answer but 201 Created is an error.
func (b *bench) triggerAs(token, team, project string, params map[string]any) (string, error) {
	status, body, err := b.postTriggerAs(token, team, project, params)
	if err != nil {
		return "", err
	}
	if status != http.StatusCreated {
		return "", fmt.Errorf("trigger for %s/%s: %d %s", team, project, status, body)
	}
	return triggeredID(body)
}

// triggeredID is the run's id in a trigger's 201 response.
func triggeredID(body []byte) (string, error) {
	var r struct {
		JobRun struct {
			ID string `json:"id"`
		} `json:"job_run"`
	}
	err := json.Unmarshal(body, &r)
	return r.JobRun.ID, err
}

func (b *bench) waitReady(ctx context.Context) error {
	if !waitFor(60*time.Second, 200*time.Millisecond, func() bool {
		status, _, err := b.do(http.MethodGet, "/readyz", nil)
		return err == nil && status == http.StatusOK
	}) {
		return fmt.Errorf("the REST API did not become ready")
	}
	return nil
}
